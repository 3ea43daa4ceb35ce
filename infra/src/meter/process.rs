//! What a process (a function binary under measurement) has used so far, read from
//! `/proc` (Linux): `make bench`'s cold-start and warm-request figures.

use std::time::Duration;

/// `VmHWM` of `/proc/<pid>/status`, in kB.
pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Time on CPU so far (the first field of each `/proc/<pid>/task/*/schedstat`, in ns) of
/// the threads alive now: a thread that exited takes its time with it, so a later reading
/// can be lower (callers subtract saturating).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}
