// projector console. Reads and acts through the admin API only (docs/openapi.json).
//
// Everything the host returns is data, and much of it (payloads, headers, errors, reasons) was
// written by someone else: it reaches the page as text nodes only (append(string),
// textContent), never parsed as markup, and never becomes a URL.
"use strict";

(function () {
  const REFRESH_MS = 2000;
  const state = {
    token: null,        // the admin token, in memory only
    selected: null,     // the projection shown below the overview
    status: [],         // the latest GET /status rows
    listing: null,      // {status, reason} of the event list shown
    event: null,        // the event detail shown
    ticks: 0,
  };
  const $ = (id) => document.getElementById(id);

  // An element with text children; props: class, data (data-* attributes), type, title, onclick.
  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "class") e.className = v;
      else if (k === "data") for (const [dk, dv] of Object.entries(v)) e.dataset[dk] = String(dv);
      else if (k === "type") e.type = v;
      else if (k === "title") e.title = String(v);
      else if (k === "onclick") e.addEventListener("click", v);
      else throw new Error("el: unexpected property " + k);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  function notice(text, isError) {
    const n = $("notice");
    n.textContent = text;
    n.className = isError ? "error" : "";
    clearTimeout(notice.timer);
    notice.timer = setTimeout(() => { n.textContent = ""; }, 8000);
  }

  function projectionPath(p, rest) {
    return "/projections/" + encodeURIComponent(p) + rest;
  }

  async function api(method, path, body, extraHeaders) {
    const headers = Object.assign({ Accept: "application/json" }, extraHeaders || {});
    if (state.token) headers.Authorization = "Bearer " + state.token;
    const init = { method, headers, credentials: "omit", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    let data = null;
    try { data = await r.json(); } catch (_) { data = null; }
    if (!r.ok) {
      const err = new Error((data && data.error) || (r.status + " " + r.statusText));
      err.status = r.status;
      throw err;
    }
    return data;
  }

  function needToken() {
    if (state.token) return true;
    notice("Enter the admin token first: event contents and actions need it.", true);
    $("token").focus();
    return false;
  }

  function when(ts) {
    if (!ts) return "-";
    const d = new Date(ts);
    return isNaN(d) ? String(ts) : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  // ---- overview -------------------------------------------------------------------------

  const STATUSES = ["pending", "processing", "done", "failed", "skipped"];

  // Re-renders only what changed, so a row an operator is about to click stays where it is.
  function changed(key, value) {
    const text = JSON.stringify(value);
    if (changed.last[key] === text) return false;
    changed.last[key] = text;
    return true;
  }
  changed.last = {};

  function renderOverview(rows) {
    if (!changed("overview", [rows, state.selected])) return;
    const body = $("projections").tBodies[0];
    body.replaceChildren(...rows.map((row) => {
      const p = row.projection;
      const cell = (field, text, cls) =>
        el("td", { class: cls || "", data: { projection: p, field } }, text);
      const lag = row.counts.pending + row.counts.processing;
      return el("tr", { class: p === state.selected ? "selected" : "", data: { projection: p } },
        el("td", {}, el("button", { class: "link", type: "button", onclick: () => select(p) }, p)),
        ...STATUSES.map((s) => cell("counts." + s, row.counts[s],
          "num" + (s === "failed" && row.counts.failed > 0 ? " bad" : ""))),
        cell("lag", lag, "num"),
        cell("stuck", row.stuck, "num" + (row.stuck > 0 ? " warn" : "")),
        cell("blocked", row.blocked, "num" + (row.blocked > 0 ? " warn" : "")),
        cell("oldest_pending_age_seconds", row.oldest_pending_age_seconds == null
          ? "-" : row.oldest_pending_age_seconds.toFixed(1) + " s", "num"),
        cell("plugin.version", row.plugin && row.plugin.version ? row.plugin.version : "-"),
        cell("paused", row.paused ? "yes (by " + row.paused.paused_by + ")" : "no",
          row.paused ? "warn" : ""));
    }));
  }

  async function refresh() {
    try {
      const all = await api("GET", "/status");
      state.status = all.projections;
      renderOverview(state.status);
      $("load-error").hidden = true;
      $("updated").textContent = "updated " + new Date().toLocaleTimeString();
      if (!state.selected && state.status.length > 0) state.selected = state.status[0].projection;
      if (state.selected) await refreshProjection(state.ticks % 5 === 0);
    } catch (e) {
      $("load-error").textContent = "Cannot read the status: " + e.message;
      $("load-error").hidden = false;
    }
    state.ticks += 1;
  }

  // ---- one projection ---------------------------------------------------------------------

  function select(p) {
    state.selected = p;
    state.listing = null;
    state.event = null;
    $("events").hidden = true;
    $("event").hidden = true;
    renderOverview(state.status);
    refreshProjection(true);
  }

  function selectedRow() {
    return state.status.find((r) => r.projection === state.selected);
  }

  async function refreshProjection(withLogs) {
    const p = state.selected;
    const row = selectedRow();
    $("projection").hidden = false;
    $("projection-name").textContent = p;
    if (row) renderReasons(row);
    const history = await api("GET", projectionPath(p, "/history")).catch(() => null);
    renderChart(history ? history.samples : []);
    if (withLogs) {
      const [audit, rebuilds] = await Promise.all([
        api("GET", projectionPath(p, "/audit")).catch(() => null),
        api("GET", projectionPath(p, "/rebuilds")).catch(() => null),
      ]);
      if (audit) renderAudit(audit.audit);
      if (rebuilds) renderRebuilds(rebuilds.rebuilds);
    }
  }

  function renderReasons(row) {
    if (!changed("reasons", [row.projection, row.failed_by_reason])) return;
    const p = row.projection;
    const reasons = Object.entries(row.failed_by_reason);
    const body = $("reasons").tBodies[0];
    if (reasons.length === 0) {
      body.replaceChildren(el("tr", {}, el("td", { class: "muted" }, "no failed events"), el("td"), el("td")));
      return;
    }
    body.replaceChildren(...reasons.map(([reason, n]) => el("tr", {},
      el("td", { data: { projection: p, field: "failed_by_reason", reason } }, reason || "(none)"),
      el("td", { class: "num", data: { projection: p, field: "failed_by_reason." + reason } }, n),
      el("td", {}, el("div", { class: "actions" },
        el("button", { type: "button", data: { action: "list", reason },
          onclick: () => listEvents("failed", reason) }, "List"),
        el("button", { type: "button", data: { action: "replay-reason", reason },
          onclick: () => replayReason(p, reason) }, "Replay all…"),
        el("button", { type: "button", data: { action: "skip-reason", reason },
          onclick: () => skipReason(p, reason) }, "Skip all…"))))));
  }

  function renderAudit(entries) {
    $("audit").tBodies[0].replaceChildren(...entries.map((a) => el("tr", {},
      el("td", {}, when(a.performed_at)), el("td", {}, a.action), el("td", {}, a.performed_by),
      el("td", {}, a.reason), el("td", {}, a.dry_run ? "yes" : "no"),
      el("td", { class: "num", title: a.event_ids.join(" ") }, a.row_count),
      el("td", { class: "excerpt" }, JSON.stringify(a.filter)))));
  }

  function renderRebuilds(rows) {
    $("rebuilds").tBodies[0].replaceChildren(...rows.map((r) => el("tr", {},
      el("td", {}, when(r.started_at)),
      el("td", { class: r.status === "failed" ? "bad" : "" }, r.status),
      el("td", {}, r.mode), el("td", { class: "excerpt" }, r.source), el("td", {}, r.started_by),
      el("td", { class: "num" }, r.rows_read), el("td", { class: "num" }, r.rows_applied),
      el("td", { class: "num" }, r.rows_failed), el("td", {}, when(r.finished_at)),
      el("td", { class: "excerpt" }, r.error || ""))));
  }

  // ---- chart ------------------------------------------------------------------------------

  function renderChart(samples) {
    const NS = "http://www.w3.org/2000/svg";
    const svg = $("chart");
    const W = 640, H = 180, L = 48, R = 48, T = 12, B = 22;
    const node = (tag, attrs, text) => {
      const n = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
      if (text !== undefined) n.textContent = text;
      return n;
    };
    svg.replaceChildren(
      node("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }),
      node("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }),
      node("line", { class: "axis", x1: W - R, y1: T, x2: W - R, y2: H - B }));
    if (!samples || samples.length === 0) {
      svg.append(node("text", { x: L + 8, y: H / 2 }, "no samples yet"));
      $("chart-numbers").textContent = "";
      return;
    }
    const t0 = samples[0].at, t1 = samples[samples.length - 1].at;
    const span = Math.max(t1 - t0, 1);
    const maxLag = Math.max(1, ...samples.map((s) => s.lag));
    const maxRate = Math.max(1, ...samples.map((s) => s.done_per_second));
    const x = (s) => (L + ((s.at - t0) / span) * (W - L - R)).toFixed(1);
    const y = (v, max) => (H - B - (v / max) * (H - T - B)).toFixed(1);
    svg.append(
      node("polyline", { class: "lag", points: samples.map((s) => x(s) + "," + y(s.lag, maxLag)).join(" ") }),
      node("polyline", { class: "rate", points: samples.map((s) => x(s) + "," + y(s.done_per_second, maxRate)).join(" ") }),
      node("text", { x: 4, y: T + 8 }, String(maxLag)),
      node("text", { x: 4, y: H - B }, "0"),
      node("text", { x: W - R + 4, y: T + 8 }, maxRate.toFixed(1) + "/s"),
      node("text", { x: L, y: H - 6 }, "-" + Math.round(span) + " s"),
      node("text", { x: W - R - 24, y: H - 6 }, "now"));
    const last = samples[samples.length - 1];
    $("chart-numbers").textContent = " latest: lag " + last.lag + ", oldest " +
      last.oldest_age_seconds.toFixed(1) + " s, " + last.done_per_second.toFixed(1) + " done/s (" +
      samples.length + " samples)";
  }

  // ---- events -----------------------------------------------------------------------------

  async function listEvents(status, reason) {
    if (!needToken()) return;
    const p = state.selected;
    state.listing = { status, reason };
    let q = "?status=" + encodeURIComponent(status) + "&limit=100";
    if (reason !== undefined && reason !== null) q += "&reason=" + encodeURIComponent(reason);
    try {
      const data = await api("GET", projectionPath(p, "/events" + q));
      $("events").hidden = false;
      $("events-title").textContent = status + " events" + (reason ? " (" + reason + ")" : "") +
        ": " + data.events.length + (data.events.length === 100 ? " (first 100)" : "");
      $("event-list").tBodies[0].replaceChildren(...data.events.map((e) => el("tr", { data: { seq: e.seq } },
        el("td", { class: "num" }, e.seq), el("td", { class: "excerpt" }, e.id),
        el("td", {}, e.blocked_by ? "blocked by " + e.blocked_by : e.status),
        el("td", {}, e.event_type), el("td", {}, e.aggregate_id), el("td", { class: "num" }, e.attempts),
        el("td", {}, e.error_reason || "-"), el("td", { class: "excerpt" }, e.error_excerpt || ""),
        el("td", { class: "excerpt" }, e.payload_excerpt), el("td", {}, e.projection_version || "-"),
        el("td", {}, el("button", { type: "button", data: { action: "open", seq: e.seq },
          onclick: () => openEvent(e.seq) }, "Open")))));
    } catch (e) {
      notice("Cannot list events: " + e.message, true);
    }
  }

  function documentText(doc) {
    if (doc.json !== null && doc.json !== undefined) return JSON.stringify(doc.json, null, 2);
    return (doc.truncated_text || "") + "\n… [cut: " + doc.bytes + " bytes in all]";
  }

  async function openEvent(seq) {
    if (!needToken()) return;
    try {
      const d = await api("GET", projectionPath(state.selected, "/events/" + encodeURIComponent(seq)));
      state.event = d;
      renderEvent(d);
    } catch (e) {
      notice("Cannot open event " + seq + ": " + e.message, true);
    }
  }

  function renderEvent(d) {
    $("event").hidden = false;
    $("event-seq").textContent = d.seq + " (" + d.id + ")";
    const fields = [
      ["status", d.status], ["event_type", d.event_type],
      ["aggregate", (d.aggregate_type ? d.aggregate_type + " " : "") + d.aggregate_id],
      ["attempts", d.attempts], ["error_reason", d.error_reason || "-"],
      ["failure_kind", d.failure_kind || "-"], ["projection_version", d.projection_version || "-"],
      ["occurred_at", when(d.occurred_at)], ["created_at", when(d.created_at)],
      ["done_at", when(d.done_at)], ["next_retry_at", when(d.next_retry_at)],
      ["claimed_by", d.claimed_by || "-"], ["replay_count", d.replay_count],
      ["last_replayed", d.last_replayed_at
        ? when(d.last_replayed_at) + " by " + d.last_replayed_by + ": " + d.last_replayed_reason : "-"],
    ];
    $("event-fields").replaceChildren(...fields.flatMap(([k, v]) =>
      [el("dt", {}, k), el("dd", { data: { field: k } }, v)]));
    $("event-payload").textContent = documentText(d.payload);
    $("event-headers").textContent = documentText(d.headers);
    $("event-error").textContent = d.error || "-";
    $("event-history").tBodies[0].replaceChildren(...d.history.map((a) => el("tr", {},
      el("td", {}, when(a.performed_at)), el("td", {}, a.action), el("td", {}, a.performed_by),
      el("td", {}, a.reason), el("td", {}, a.dry_run ? "yes" : "no"), el("td", { class: "num" }, a.row_count))));
    const failed = d.status === "failed";
    $("event-replay").disabled = !failed;
    $("event-skip").disabled = !failed;
  }

  // ---- actions: each asks for a reason and a confirmation ----------------------------------

  // Shows the dialog; `prepare(by)` may compute what will happen (a dry run) and returns the text
  // to show, or throws; `run(reason, by)` acts and returns the message to show.
  function confirmAction(title, prepare, run) {
    if (!needToken()) return;
    const dialog = $("confirm");
    const ok = $("confirm-ok");
    $("confirm-title").textContent = title;
    $("confirm-what").textContent = "Working out what this will do…";
    $("confirm-error").textContent = "";
    $("confirm-reason").value = "";
    ok.disabled = true;
    dialog.showModal();
    const by = () => $("confirm-by").value.trim() || "console";
    Promise.resolve().then(() => prepare(by())).then((what) => {
      $("confirm-what").textContent = what.text;
      ok.disabled = !what.possible;
      $("confirm-reason").focus();
    }, (e) => {
      $("confirm-what").textContent = "";
      $("confirm-error").textContent = e.message;
    });
    ok.onclick = async () => {
      const reason = $("confirm-reason").value.trim();
      if (!reason) {
        $("confirm-error").textContent = "A reason is required: it is recorded with the action.";
        $("confirm-reason").focus();
        return;
      }
      ok.disabled = true;
      try {
        const message = await run(reason, by());
        dialog.close();
        notice(message);
        await afterAction();
      } catch (e) {
        $("confirm-error").textContent = e.message;
        ok.disabled = false;
      }
    };
  }

  async function afterAction() {
    await refresh();
    await refreshProjection(true);
    if (state.listing) await listEvents(state.listing.status, state.listing.reason);
    if (state.event) await openEvent(state.event.seq);
  }

  function idsText(ids) {
    return ids.length <= 5 ? ids.join(", ") : ids.slice(0, 5).join(", ") + ", … (" + ids.length + ")";
  }

  function replay(p, filter, describe) {
    let preview = null;
    confirmAction("Replay " + describe,
      async (by) => {
        preview = await api("POST", projectionPath(p, "/replay"),
          Object.assign({ by, reason: "console preview before a replay", dry_run: true }, filter));
        const n = preview.event_ids.length;
        return {
          possible: n > 0,
          text: n === 0 ? "Dry run: no failed event matches; nothing to replay."
            : "Dry run: " + n + " failed event(s) of " + p + " would go back to pending, attempts reset: " +
              idsText(preview.event_ids) + ". Confirm to replay exactly these.",
        };
      },
      async (reason, by) => {
        const done = await api("POST", projectionPath(p, "/replay"),
          Object.assign({}, filter, { by, reason, ids: preview.event_ids }));
        return "Replayed " + done.event_ids.length + " event(s) of " + p + ".";
      });
  }

  function replayReason(p, reason) {
    replay(p, { error_reason: reason }, "every event failed with " + (reason || "(none)"));
  }

  function skip(p, idsFor, describe) {
    let ids = [];
    confirmAction("Skip " + describe,
      async () => {
        ids = await idsFor();
        return {
          possible: ids.length > 0,
          text: ids.length === 0 ? "No failed event matches; nothing to skip."
            : ids.length + " failed event(s) of " + p + " become skipped (terminal; their aggregates continue): " +
              idsText(ids) + ".",
        };
      },
      async (reason, by) => {
        const done = await api("POST", projectionPath(p, "/skip"), { by, reason, ids });
        return "Skipped " + done.event_ids.length + " event(s) of " + p + ".";
      });
  }

  function skipReason(p, reason) {
    skip(p, async () => {
      const q = "?status=failed&limit=500&reason=" + encodeURIComponent(reason);
      const data = await api("GET", projectionPath(p, "/events" + q));
      return data.events.map((e) => e.id);
    }, "every event failed with " + (reason || "(none)"));
  }

  function wire() {
    $("token-use").addEventListener("click", async () => {
      state.token = $("token").value.trim() || null;
      const st = $("token-state");
      if (!state.token) { st.textContent = "no token: read-only"; return; }
      const p = state.selected || (state.status[0] && state.status[0].projection);
      if (!p) { st.textContent = "token set"; return; }
      try {
        await api("GET", projectionPath(p, "/events?status=failed&limit=1"));
        st.textContent = "token accepted";
        st.className = "ok";
        $("notice").textContent = "";
      } catch (e) {
        st.textContent = "token refused: " + e.message;
        st.className = "error";
        state.token = null;
      }
    });
    $("confirm-cancel").addEventListener("click", () => $("confirm").close());
    $("list-blocked").addEventListener("click", () => listEvents("blocked", null));
    $("event-replay").addEventListener("click", () => {
      const d = state.event;
      replay(d.projection, { ids: [d.id] }, "event " + d.seq);
    });
    $("event-skip").addEventListener("click", () => {
      const d = state.event;
      skip(d.projection, async () => (d.status === "failed" ? [d.id] : []), "event " + d.seq);
    });
    $("pause").addEventListener("click", () => {
      const p = state.selected;
      confirmAction("Pause " + p,
        async () => ({ possible: true, text: "Hosts stop claiming events of " + p + " until it is resumed (survives restarts); lag keeps growing meanwhile." }),
        async (reason, by) => {
          await api("POST", projectionPath(p, "/pause"), { by, reason });
          return p + " paused.";
        });
    });
    $("resume").addEventListener("click", () => {
      const p = state.selected;
      confirmAction("Resume " + p,
        async () => ({ possible: true, text: "Hosts claim events of " + p + " again." }),
        async (reason, by) => {
          const r = await api("POST", projectionPath(p, "/resume"), { by, reason });
          return p + (r.was_paused ? " resumed." : " was not paused.");
        });
    });
    $("rollback").addEventListener("click", () => {
      const p = state.selected;
      confirmAction("Roll back the plugin of " + p,
        async () => {
          const v = await api("GET", projectionPath(p, "/plugins"));
          const active = v.versions.find((x) => x.status === "active");
          return {
            possible: v.versions.length > 1,
            text: "The version active before " + (active ? (active.version_label || active.digest) : "the current one") +
              " becomes active again; batches in flight finish on the current one. " + v.versions.length + " version(s) recorded.",
          };
        },
        async (reason, by) => {
          const r = await api("POST", projectionPath(p, "/rollback"), undefined,
            { "X-Projector-By": by, "X-Projector-Reason": encodeURIComponent(reason) });
          return p + ": " + r.version + " is active.";
        });
    });
  }

  wire();
  refresh();
  setInterval(refresh, REFRESH_MS);
})();
