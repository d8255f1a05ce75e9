//! CPU time a drain used, read from `/proc`: the database cluster's processes, the child hosts,
//! the bench process itself, and the whole machine's busy and stolen time.
//!
//! Wall-clock rates on a shared machine move by a factor of two when a neighbour compiles; the
//! CPU a drain spends per event does not (a neighbour takes CPU away, it does not make our work
//! bigger). So every drain also reports CPU milliseconds per 1,000 events, split by who spent
//! them, and the comparisons that matter (projector against the queue, four hosts against one)
//! can be read off work done instead of off a stopwatch.
//!
//! Invariants:
//! - The cluster's time is the postmaster's own and reaped children's (`utime + stime + cutime +
//!   cstime`) plus every live child's (`utime + stime`), each as a difference between two samples.
//!   A child that ends between the samples moves from the live sum into the postmaster's `cutime`
//!   whole, so the difference still counts exactly its time after the first sample; a child born
//!   in between counts from zero. Only a child that ends and is not yet reaped at the second
//!   sample is missed (milliseconds).
//! - The cluster is found from a backend of the bench's pool: its parent must be a process named
//!   `postgres` on this machine. A database on another machine (or in another pid namespace)
//!   gives no cluster figure rather than a wrong one.
//! - Hosts are counted by pid, their own time only (threads included; they start no children).
//! - Clock ticks are converted with `sysconf(_SC_CLK_TCK)`.

use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Instant;

/// `/proc/<pid>/stat` times, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
struct ProcTimes {
    ppid: u32,
    own: u64,
    reaped_children: u64,
}

fn proc_times(pid: u32) -> Option<ProcTimes> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: the fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 of proc(5) is f[0]: ppid is field 4, utime..cstime fields 14..17.
    let n = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    Some(ProcTimes {
        ppid: u32::try_from(n(4)?).ok()?,
        own: n(14)? + n(15)?,
        reaped_children: n(16)? + n(17)?,
    })
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The machine's `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
struct MachineTimes {
    busy: u64,
    steal: u64,
}

fn machine_times() -> Option<MachineTimes> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    if v.len() < 8 {
        return None;
    }
    Some(MachineTimes {
        busy: v[0] + v[1] + v[2] + v[5] + v[6],
        steal: v[7],
    })
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// Whose CPU a drain's figures cover: the cluster (if it runs on this machine) and the hosts.
#[derive(Debug, Clone)]
pub struct Meter {
    postmaster: Option<u32>,
    hosts: Vec<u32>,
}

/// The times at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    machine: Option<MachineTimes>,
    postmaster: Option<ProcTimes>,
    cluster_children: HashMap<u32, u64>,
    hosts: u64,
    bench: u64,
}

/// CPU seconds spent between two samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuUse {
    /// The database cluster's processes (backends, WAL writer, checkpointer, autovacuum);
    /// `None` when the cluster is not on this machine.
    pub database: Option<f64>,
    /// The child hosts.
    pub hosts: f64,
    /// The bench process (the raw loops and the queue run in it).
    pub bench: f64,
    /// Every CPU of the machine, busy (ours and any neighbour's).
    pub machine_busy: f64,
    /// Time the hypervisor gave to other guests while ours were runnable.
    pub steal: f64,
    /// Wall-clock seconds between the samples.
    pub wall: f64,
}

/// Below this much CPU (ten clock ticks at the usual 100 Hz) a figure is mostly rounding: the
/// rows built from [`PerThousand::measured_ms`] are left out, the notes still print it.
const MEASURABLE_SECONDS: f64 = 0.1;

impl CpuUse {
    /// Milliseconds of the cluster's and the hosts' CPU (and the bench's) per 1,000 events.
    pub fn per_thousand(&self, events: i64) -> PerThousand {
        let k = 1_000_000.0 / events.max(1) as f64;
        PerThousand {
            measurable: self.database.is_some_and(|d| d >= MEASURABLE_SECONDS),
            database_ms: self.database.map(|d| d * k),
            hosts_ms: self.hosts * k,
            bench_ms: self.bench * k,
            machine_ms: self.machine_busy * k,
            steal_ms: self.steal * k,
        }
    }
}

/// [`CpuUse`] per 1,000 events, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PerThousand {
    /// Whether the cluster's time was long enough to be more than rounding.
    pub measurable: bool,
    /// The cluster's processes.
    pub database_ms: Option<f64>,
    /// The child hosts.
    pub hosts_ms: f64,
    /// The bench process.
    pub bench_ms: f64,
    /// The whole machine, busy.
    pub machine_ms: f64,
    /// Stolen by the hypervisor.
    pub steal_ms: f64,
}

impl PerThousand {
    /// What was measured for this drain: the cluster's, the hosts' and the bench's own time
    /// (what the drain itself spent), `None` without a cluster figure.
    pub fn ours_ms(&self) -> Option<f64> {
        self.database_ms.map(|d| d + self.hosts_ms + self.bench_ms)
    }

    /// The cluster's and its clients' time ([`PerThousand::ours_ms`]) when it is long enough to
    /// be a measurement: what the report's CPU rows are made of.
    pub fn measured_ms(&self) -> Option<f64> {
        self.ours_ms().filter(|_| self.measurable)
    }

    /// The cluster's time alone, when long enough to be a measurement.
    pub fn measured_database_ms(&self) -> Option<f64> {
        self.database_ms.filter(|_| self.measurable)
    }

    /// One line for a row's note.
    pub fn describe(&self) -> String {
        let database = match self.database_ms {
            Some(d) => format!("database {d:.0}"),
            None => "database not on this machine".to_owned(),
        };
        format!(
            "CPU ms per 1,000 events: {database}, hosts {:.0}, bench process {:.0}; whole \
             machine busy {:.0}, stolen {:.0}",
            self.hosts_ms, self.bench_ms, self.machine_ms, self.steal_ms
        )
    }
}

impl Meter {
    /// A meter for the cluster behind `pool` and the processes `hosts`.
    pub async fn new(pool: &PgPool, hosts: Vec<u32>) -> Meter {
        Meter {
            postmaster: postmaster(pool).await,
            hosts,
        }
    }

    /// The times now.
    pub fn sample(&self) -> Sample {
        let postmaster = self.postmaster.and_then(proc_times);
        let mut cluster_children = HashMap::new();
        if let (Some(pm), Ok(dir)) = (self.postmaster, std::fs::read_dir("/proc")) {
            for entry in dir.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                if let Some(t) = proc_times(pid).filter(|t| t.ppid == pm) {
                    cluster_children.insert(pid, t.own);
                }
            }
        }
        Sample {
            at: Instant::now(),
            machine: machine_times(),
            postmaster,
            cluster_children,
            hosts: self
                .hosts
                .iter()
                .filter_map(|&p| proc_times(p))
                .map(|t| t.own)
                .sum(),
            bench: proc_times(std::process::id()).map_or(0, |t| t.own),
        }
    }
}

impl Sample {
    /// What was spent from `earlier` to this sample.
    pub fn since(&self, earlier: &Sample) -> CpuUse {
        let hz = ticks_per_second();
        let s = |ticks: u64| ticks as f64 / hz;
        let database = match (earlier.postmaster, self.postmaster) {
            (Some(a), Some(b)) => {
                let own = |t: ProcTimes| t.own + t.reaped_children;
                let live = |m: &HashMap<u32, u64>| m.values().sum::<u64>();
                let after = own(b) + live(&self.cluster_children);
                let before = own(a) + live(&earlier.cluster_children);
                Some(s(after.saturating_sub(before)))
            }
            _ => None,
        };
        let (machine_busy, steal) = match (earlier.machine, self.machine) {
            (Some(a), Some(b)) => (
                s(b.busy.saturating_sub(a.busy)),
                s(b.steal.saturating_sub(a.steal)),
            ),
            _ => (0.0, 0.0),
        };
        CpuUse {
            database,
            hosts: s(self.hosts.saturating_sub(earlier.hosts)),
            bench: s(self.bench.saturating_sub(earlier.bench)),
            machine_busy,
            steal,
            wall: self.at.duration_since(earlier.at).as_secs_f64(),
        }
    }
}

/// Runs `work` with a meter on the cluster behind `pool` (and this process, which `work` runs
/// in): what it returned, and the CPU it used.
pub async fn metered<T>(
    pool: &PgPool,
    work: impl std::future::Future<Output = projector_core::Result<T>>,
) -> projector_core::Result<(T, CpuUse)> {
    let meter = Meter::new(pool, Vec::new()).await;
    let before = meter.sample();
    let value = work.await?;
    Ok((value, meter.sample().since(&before)))
}

/// The postmaster of the cluster behind `pool`, if it runs on this machine.
async fn postmaster(pool: &PgPool) -> Option<u32> {
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
        .ok()?;
    let backend = u32::try_from(backend).ok()?;
    if comm(backend)? != "postgres" {
        return None;
    }
    let parent = proc_times(backend)?.ppid;
    (comm(parent)? == "postgres").then_some(parent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    /// What the meter charges a child process that runs `script` for 300 ms.
    fn charged(script: &str) -> CpuUse {
        let mut child = Command::new("sh")
            .args(["-c", script])
            .stdout(Stdio::null())
            .spawn()
            .expect("sh runs");
        let meter = Meter {
            postmaster: None,
            hosts: vec![child.id()],
        };
        let before = meter.sample();
        std::thread::sleep(Duration::from_millis(300));
        let used = meter.sample().since(&before);
        child.kill().ok();
        child.wait().ok();
        used
    }

    #[test]
    fn a_host_is_charged_for_the_cpu_it_burns() {
        let used = charged("while :; do :; done");
        // 300 ms of a busy loop: at least 150 ms charged (ticks are 10 ms), the machine at
        // least as busy.
        assert!(used.hosts >= 0.15, "{used:?}");
        assert!(used.machine_busy >= used.hosts * 0.9, "{used:?}");
        assert_eq!(used.database, None);
    }

    #[test]
    fn a_host_that_waits_is_not_charged() {
        let used = charged("sleep 5");
        assert!(used.hosts < 0.05, "{used:?}");
        assert!(used.wall >= 0.3, "{used:?}");
    }

    #[test]
    fn per_thousand_scales_by_the_events() {
        let used = CpuUse {
            database: Some(2.0),
            hosts: 0.5,
            bench: 0.0,
            machine_busy: 3.0,
            steal: 0.1,
            wall: 2.0,
        };
        let k = used.per_thousand(10_000);
        assert_eq!(k.database_ms, Some(200.0));
        assert_eq!(k.ours_ms(), Some(250.0));
        assert_eq!(k.measured_ms(), Some(250.0));
        let short = CpuUse {
            database: Some(0.05),
            ..used
        };
        assert_eq!(short.per_thousand(10_000).measured_ms(), None);
        assert!(
            k.describe().contains("database 200, hosts 50"),
            "{}",
            k.describe()
        );
    }
}
