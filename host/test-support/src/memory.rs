//! A process's memory as the kernel reports it in `/proc/<pid>/status`: what the tests hold the
//! host's footprint to and what the bench reports, read the same way by both.

use std::io;

/// A `/proc/<pid>/status` memory field (`VmRSS`, `VmHWM`, ...) in MiB.
pub fn status_mib(pid: u32, field: &str) -> io::Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path)?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no {field} in {path}")))?;
    Ok(kib / 1024.0)
}

/// The resident set of process `pid` now (`VmRSS`), in MiB.
pub fn rss_mib(pid: u32) -> io::Result<f64> {
    status_mib(pid, "VmRSS")
}

/// The peak resident set of process `pid` so far (`VmHWM`), in MiB.
pub fn peak_rss_mib(pid: u32) -> io::Result<f64> {
    status_mib(pid, "VmHWM")
}

#[cfg(test)]
mod tests {
    #[test]
    fn our_own_peak_is_at_least_our_resident_set() {
        let pid = std::process::id();
        let rss = super::rss_mib(pid).unwrap();
        assert!(rss > 0.0);
        assert!(super::peak_rss_mib(pid).unwrap() >= rss);
        assert!(super::status_mib(pid, "NoSuchField").is_err());
    }
}
