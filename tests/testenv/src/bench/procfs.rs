//! Memory of a process from `/proc/<pid>/status`.

/// A process's resident memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// Resident set size now (`VmRSS`), in bytes.
    pub rss_bytes: u64,
    /// The highest resident set size since the process started (`VmHWM`), in bytes.
    pub peak_rss_bytes: u64,
}

/// Reads `VmRSS` and `VmHWM` from the text of a `/proc/<pid>/status` file; `None` when
/// either is missing (a kernel thread, a zombie).
pub fn parse_status(text: &str) -> Option<MemoryUse> {
    let kib = |field: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(field))?;
        let value = line[field.len()..].trim().strip_suffix("kB")?.trim();
        value.parse::<u64>().ok().map(|v| v * 1024)
    };
    Some(MemoryUse {
        rss_bytes: kib("VmRSS:")?,
        peak_rss_bytes: kib("VmHWM:")?,
    })
}

/// The memory of process `pid`, or `None` when it is gone.
pub fn memory_of(pid: i32) -> Option<MemoryUse> {
    parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Bytes as MiB, for printing.
pub fn mib(bytes: u64) -> u64 {
    bytes / (1024 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_current_and_peak_rss() {
        let text = "Name:\tetcd\nVmPeak:\t 9000 kB\nVmHWM:\t   204800 kB\nVmRSS:\t   102400 kB\nThreads:\t12\n";
        assert_eq!(
            parse_status(text),
            Some(MemoryUse {
                rss_bytes: 100 * 1024 * 1024,
                peak_rss_bytes: 200 * 1024 * 1024
            })
        );
        assert_eq!(parse_status("Name:\tkthreadd\nThreads:\t1\n"), None);
        assert_eq!(mib(200 * 1024 * 1024 + 5), 200);
    }

    #[test]
    fn this_process_has_memory_and_a_gone_one_has_none() {
        let me = memory_of(std::process::id() as i32).expect("our own status");
        assert!(
            me.rss_bytes > 0 && me.peak_rss_bytes >= me.rss_bytes,
            "{me:?}"
        );
        assert_eq!(memory_of(i32::MAX), None);
    }
}
