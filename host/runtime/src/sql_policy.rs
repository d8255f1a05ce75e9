//! Which statements the `sql` capability runs at all: the host's own check, before Postgres
//! sees the text.
//!
//! Postgres privileges decide *what* a statement may touch (see `projector_store::sql_roles`); this
//! module decides what *kind* of statement a plugin may send, because some statements are not a
//! matter of privileges: they change the transaction the host lent (`COMMIT`, `SAVEPOINT`), or the
//! session that outlives the batch (`SET`, `LISTEN`, session-level advisory locks).
//!
//! Invariants:
//! - One statement per call: text after a top-level `;` is refused (`multiple statements`).
//! - The statement starts with `SELECT`, `INSERT`, `UPDATE`, `DELETE`, `WITH`, `VALUES`, `TABLE`
//!   or `MERGE` (after comments and opening parentheses). Everything else, transaction control,
//!   `SET`/`RESET`, `LISTEN`, `COPY`, `DO`, `CALL`, `DISCARD`, `PREPARE`, `DECLARE`, DDL, is
//!   refused. No such statement can hide inside an allowed one: Postgres does not accept them
//!   in subqueries or CTEs.
//! - Functions that reach past the transaction or run SQL given as a string are refused by name
//!   wherever they appear ([`FORBIDDEN_FUNCTIONS`]): `set_config`, session-level advisory locks,
//!   `dblink`, large objects, signalling other backends, reading server files, and the built-ins that
//!   execute a query string (`query_to_xml`, `ts_stat`, ...). Names are compared the way Postgres
//!   resolves them (unquoted folded to lower case, quoted exact); `U&"..."` identifiers and
//!   strings are refused because they could spell a name in escapes.
//! - This check is one layer, not the boundary: whatever a statement still leaves on the
//!   connection is reset when the connection goes back to its pool (see `sql_roles`), and the
//!   statement timeout the host sets cannot be changed by an allowed statement.

/// Statement kinds a plugin may run (the first keyword, lower case).
const ALLOWED_FIRST_WORDS: &[&str] = &[
    "select", "insert", "update", "delete", "with", "values", "table", "merge",
];

/// Functions a plugin statement may not name, anywhere (exact names, lower case).
pub const FORBIDDEN_FUNCTIONS: &[&str] = &[
    // session state that outlives the batch
    "set_config",
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    // other sessions and the server (pg_notify stays allowed: it is transactional, delivered
    // only if the batch commits, and query-cache invalidates with it)
    "pg_cancel_backend",
    "pg_terminate_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    // SQL given as a string (runs outside this check)
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "ts_stat",
    "ts_rewrite",
    // large objects persist outside any granted table
    "loread",
    "lowrite",
];

/// Name prefixes refused like [`FORBIDDEN_FUNCTIONS`]: `dblink*` (another connection) and
/// `lo_*` (large objects).
pub const FORBIDDEN_PREFIXES: &[&str] = &["dblink", "lo_"];

#[derive(Debug, PartialEq)]
enum Token {
    /// An identifier or keyword, as Postgres resolves it.
    Word(String),
    Semicolon,
    OpenParen,
    /// `U&` before a quote: a Unicode-escaped string or identifier.
    UnicodeEscape,
    Other,
}

/// Splits `sql` into the tokens the policy looks at; string literals, comments and operators
/// count as [`Token::Other`] (or nothing). Unterminated quotes or comments end the text, as they
/// would make Postgres refuse the statement anyway.
fn tokens(sql: &str) -> Vec<Token> {
    let chars: Vec<char> = sql.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let n = chars.len();
    while i < n {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '-' if chars.get(i + 1) == Some(&'-') => {
                while i < n && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                // Postgres block comments nest.
                let mut depth = 0usize;
                while i < n {
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            '\'' => {
                // A string; E'...' strings (the E was read as a word) also take backslash escapes.
                let escapes = matches!(out.last(), Some(Token::Word(w)) if w == "e");
                i += 1;
                while i < n {
                    match chars[i] {
                        '\\' if escapes => i += 2,
                        '\'' if chars.get(i + 1) == Some(&'\'') => i += 2,
                        '\'' => {
                            i += 1;
                            break;
                        }
                        _ => i += 1,
                    }
                }
                out.push(Token::Other);
            }
            '"' => {
                let mut name = String::new();
                i += 1;
                while i < n {
                    if chars[i] == '"' {
                        if chars.get(i + 1) == Some(&'"') {
                            name.push('"');
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    name.push(chars[i]);
                    i += 1;
                }
                out.push(Token::Word(name));
            }
            '$' => {
                // `$1` is a parameter; `$tag$ ... $tag$` (tag possibly empty) is a string.
                let start = i;
                let mut j = i + 1;
                while j < n && (chars[j].is_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let tag_is_name = j == i + 1 || !chars[i + 1].is_ascii_digit();
                if j < n && chars[j] == '$' && tag_is_name {
                    let tag: String = chars[start..=j].iter().collect();
                    let tag: Vec<char> = tag.chars().collect();
                    i = j + 1;
                    loop {
                        if i >= n {
                            break;
                        }
                        if chars[i..].starts_with(&tag) {
                            i += tag.len();
                            break;
                        }
                        i += 1;
                    }
                    out.push(Token::Other);
                } else {
                    i = j.max(i + 1);
                    out.push(Token::Other);
                }
            }
            ';' => {
                out.push(Token::Semicolon);
                i += 1;
            }
            '(' => {
                out.push(Token::OpenParen);
                i += 1;
            }
            '&' if matches!(out.last(), Some(Token::Word(w)) if w == "u")
                && matches!(chars.get(i + 1), Some('\'') | Some('"')) =>
            {
                out.push(Token::UnicodeEscape);
                i += 1;
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut word = String::new();
                while i < n && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$') {
                    word.extend(chars[i].to_lowercase());
                    i += 1;
                }
                out.push(Token::Word(word));
            }
            _ => {
                out.push(Token::Other);
                i += 1;
            }
        }
    }
    out
}

/// Checks one plugin statement. `Err` says why it is refused, for the plugin and the log.
pub fn check(statement: &str) -> Result<(), String> {
    let tokens = tokens(statement);
    if let Some(pos) = tokens.iter().position(|t| *t == Token::Semicolon) {
        if tokens[pos..].iter().any(|t| *t != Token::Semicolon) {
            return Err(
                "multiple statements in one call (send one statement per query/execute)".into(),
            );
        }
    }
    if tokens.contains(&Token::UnicodeEscape) {
        return Err("U&'...' / U&\"...\" escapes are not accepted".into());
    }
    let first = tokens.iter().find(|t| **t != Token::OpenParen);
    match first {
        None => return Err("empty statement".into()),
        Some(Token::Word(w)) if ALLOWED_FIRST_WORDS.contains(&w.as_str()) => {}
        Some(Token::Word(w)) => {
            return Err(format!(
                "`{}` statements are not allowed: the sql capability runs SELECT, INSERT, UPDATE, \
                 DELETE, MERGE, VALUES, TABLE and WITH only",
                w.to_uppercase()
            ))
        }
        Some(_) => return Err("the statement does not start with a keyword".into()),
    }
    for t in &tokens {
        if let Token::Word(w) = t {
            let forbidden = FORBIDDEN_FUNCTIONS.contains(&w.as_str())
                || FORBIDDEN_PREFIXES.iter().any(|p| w.starts_with(p));
            if forbidden {
                return Err(format!(
                    "`{w}` may not be called from a plugin: its effect outlives the batch's \
                     transaction or runs SQL outside this check"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn ordinary_statements_pass() {
        for ok in [
            "SELECT 1",
            "  select * from t where a = $1",
            "INSERT INTO t VALUES ($1, 'a;b') ON CONFLICT (id) DO UPDATE SET note = EXCLUDED.note",
            "UPDATE t SET note = $$x; COMMIT$$ WHERE id = $1;",
            "WITH d AS (DELETE FROM t RETURNING id) SELECT count(*) FROM d",
            "(SELECT 1) UNION (SELECT 2)",
            "/* c */ -- c\n SELECT 'set_config' AS word, E'\\'; COMMIT' AS s",
            "select \"LO_x\" from t",
            "SELECT pg_advisory_xact_lock(1)",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn statements_that_change_the_transaction_or_session_are_refused() {
        for bad in [
            "COMMIT",
            "commit; begin",
            "BEGIN",
            "SAVEPOINT x",
            "RELEASE SAVEPOINT projector_batch",
            "ROLLBACK",
            "END",
            "SET statement_timeout = 0",
            "set local role postgres",
            "RESET ALL",
            "LISTEN x",
            "DISCARD ALL",
            "COPY t FROM PROGRAM 'id'",
            "DO $$ BEGIN PERFORM 1; END $$",
            "CALL p()",
            "PREPARE p AS SELECT 1",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            "CREATE TEMP TABLE outbox_events (x int)",
            "SELECT 1; SELECT 2",
            "SELECT 1; -- trailing\n COMMIT",
            "SELECT set_config('statement_timeout', '0', false)",
            "SELECT pg_catalog.\"set_config\"('role', 'x', false)",
            "SELECT SET_CONFIG('a','b',true)",
            "SELECT pg_advisory_lock(hashtext('projector_sql_roles'))",
            "SELECT lo_import('/etc/passwd')",
            "SELECT dblink_exec('x', 'y')",
            "SELECT query_to_xml('select 1', true, true, '')",
            "SELECT ts_stat('select set_config(1)')",
            "SELECT U&\"\\0073et_config\"('a', 'b', false)",
            "",
            "  -- only a comment",
        ] {
            assert!(check(bad).is_err(), "{bad:?} passed");
        }
    }
}
