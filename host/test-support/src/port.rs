//! Free TCP ports on 127.0.0.1.
//!
//! Invariant: a port handed out here is never handed out again in the same process, so two hosts
//! (or a host and a stand-in server) started by one test binary never race for the same port
//! through this function. (Another process may still take a port between the probe and the bind;
//! callers that can retry, like the test cluster's start, do.)

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process has not handed out
/// before.
pub fn free_port() -> std::io::Result<u16> {
    // A panic elsewhere while holding the lock leaves the set intact: keep using it.
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if handed_out.insert(port) {
            return Ok(port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..200).map(|_| free_port().unwrap()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
    }
}
