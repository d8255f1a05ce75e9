//! Postgres URLs: the tests and the bench each create a database of their own on a server they
//! are given the admin URL of, and hand the host a URL naming that database. (Checked, with the
//! rest of the harness, in `tests/delivery/harness.rs`.)

/// `url` with its database (the path) replaced by `database`, keeping any query string.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    match query {
        Some(query) => format!("{}/{database}?{query}", &base[..authority_end]),
        None => format!("{}/{database}", &base[..authority_end]),
    }
}
