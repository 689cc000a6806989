//! Memory of a process from `/proc/<pid>/status`, its CPU time from `/proc/<pid>/stat`.

/// A process's resident memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// Resident set size now (`VmRSS`), in bytes.
    pub rss_bytes: u64,
    /// The highest resident set size since the process started (`VmHWM`), in bytes.
    pub peak_rss_bytes: u64,
    /// The part of `rss_bytes` that is the process's own memory, its heap and stacks
    /// (`RssAnon`); 0 when the kernel does not say.
    pub anon_bytes: u64,
    /// The part that is mapped files, mostly the executable's code (`RssFile`); 0 when
    /// the kernel does not say.
    pub file_bytes: u64,
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
        anon_bytes: kib("RssAnon:").unwrap_or_default(),
        file_bytes: kib("RssFile:").unwrap_or_default(),
    })
}

/// The memory of process `pid`, or `None` when it is gone.
pub fn memory_of(pid: i32) -> Option<MemoryUse> {
    parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// CPU time (user and system) that process `pid` has used, in seconds; `None` when it is
/// gone. Read from fields 14 and 15 of `/proc/<pid>/stat`, in clock ticks of
/// `USER_HZ`, which Linux fixes at 100 for user space.
pub fn cpu_seconds_of(pid: i32) -> Option<f64> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `utime + stime` of a `/proc/<pid>/stat` line, in seconds. The command name (field 2)
/// may hold spaces and parentheses, so the fields are counted after its last `)`.
pub fn parse_stat(text: &str) -> Option<f64> {
    const USER_HZ: f64 = 100.0;
    let after_name = &text[text.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name: utime is field 14, stime 15.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// The whole machine's idle time and the time the hypervisor gave its virtual CPUs to
/// others (steal), summed over the CPUs, in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MachineTimes {
    /// Time no CPU had anything to run (`idle` + `iowait`).
    pub idle: f64,
    /// Time a virtual CPU was ready but not running (`steal`).
    pub steal: f64,
}

/// [`MachineTimes`] so far, from the `cpu` line of `/proc/stat`; `None` where it cannot be
/// read.
pub fn machine_times() -> Option<MachineTimes> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The `cpu` line of a `/proc/stat`: `cpu user nice system idle iowait irq softirq steal
/// ...`, in clock ticks of `USER_HZ` (100).
pub fn parse_proc_stat(text: &str) -> Option<MachineTimes> {
    const USER_HZ: f64 = 100.0;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let field = |i: usize| fields.get(i).copied();
    Some(MachineTimes {
        idle: (field(3)? + field(4)?) as f64 / USER_HZ,
        steal: field(7)? as f64 / USER_HZ,
    })
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
        let text = "Name:\tetcd\nVmPeak:\t 9000 kB\nVmHWM:\t   204800 kB\nVmRSS:\t   102400 kB\nRssAnon:\t   81920 kB\nRssFile:\t   20480 kB\nThreads:\t12\n";
        assert_eq!(
            parse_status(text),
            Some(MemoryUse {
                rss_bytes: 100 * 1024 * 1024,
                peak_rss_bytes: 200 * 1024 * 1024,
                anon_bytes: 80 * 1024 * 1024,
                file_bytes: 20 * 1024 * 1024,
            })
        );
        let old_kernel = "VmHWM:\t2048 kB\nVmRSS:\t1024 kB\n";
        assert_eq!(parse_status(old_kernel).unwrap().anon_bytes, 0);
        assert_eq!(parse_status("Name:\tkthreadd\nThreads:\t1\n"), None);
        assert_eq!(mib(200 * 1024 * 1024 + 5), 200);
    }

    #[test]
    fn reads_the_machines_idle_and_stolen_time() {
        let text = "cpu  1856520 0 437689 2654608 180674 0 24078 36746 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 1\n";
        assert_eq!(
            parse_proc_stat(text),
            Some(MachineTimes {
                idle: 28352.82,
                steal: 367.46,
            })
        );
        assert_eq!(parse_proc_stat("cpu  1 2 3\n"), None);
        assert_eq!(parse_proc_stat("intr 1\n"), None);
        assert!(machine_times().is_some());
    }

    #[test]
    fn reads_cpu_time_after_a_name_with_spaces() {
        let line = "4242 (tokio (rt) w) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 8 0 100 0 0\n";
        assert_eq!(parse_stat(line), Some(3.25));
        assert_eq!(parse_stat("4242 (x) S 1"), None);
        let me = cpu_seconds_of(std::process::id() as i32).expect("our own stat");
        assert!(me >= 0.0, "{me}");
        assert_eq!(cpu_seconds_of(i32::MAX), None);
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
