//! CPU accounting from /proc, for benchmarks on a shared machine: what the
//! measured tool, Dovecot's `imap` processes and everything else used
//! during a measurement, so a figure taken while other builds ran says so.
//! Linux only, like the rest of the harness.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

/// Clock ticks per second of the times in /proc (USER_HZ, 100 on Linux).
pub const TICKS_PER_SEC: f64 = 100.0;

/// A process's scheduling state and CPU time.
#[derive(Debug, Clone, Copy)]
pub struct ProcStat {
    /// `R`, `S`, `Z` (exited, not yet reaped: its times are final)...
    pub state: char,
    /// User + system CPU ticks ([`TICKS_PER_SEC`]).
    pub ticks: u64,
}

/// State and user + system CPU ticks of a process.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// A `/proc/<pid>/stat` (or a thread's) line.
fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name, in parentheses, may contain spaces and parentheses.
    let fields: Vec<&str> = text
        .get(text.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ticks: fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?,
    })
}

/// CPU seconds of a process's live threads, summed by thread name.
pub fn thread_cpu(pid: u32) -> BTreeMap<String, f64> {
    let mut by_name: BTreeMap<String, u64> = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Default::default();
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let ticks = std::fs::read_to_string(path.join("stat"))
            .ok()
            .and_then(|text| parse_stat(&text))
            .map_or(0, |stat| stat.ticks);
        *by_name.entry(name.trim().to_owned()).or_insert(0) += ticks;
    }
    by_name
        .into_iter()
        .map(|(name, ticks)| (name, ticks as f64 / TICKS_PER_SEC))
        .collect()
}

/// Busy ticks of all CPUs together (everything but idle and iowait).
fn machine_busy_ticks() -> u64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = text.lines().next().unwrap_or_default();
    let n: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    [0, 1, 2, 5, 6, 7].iter().filter_map(|i| n.get(*i)).sum()
}

/// Measures the CPU seconds Dovecot's `imap` processes (the master's children
/// named `imap`), the tool and the rest of the machine use during a
/// measurement. `imap` processes are sampled every 10 ms, so one that
/// exits loses at most its last 10 ms.
#[derive(Debug)]
pub struct CpuMeter {
    stop: Arc<AtomicBool>,
    imap: Option<JoinHandle<u64>>,
    busy_start: u64,
    own_start: u64,
}

/// CPU seconds used during a [`CpuMeter`]'s window.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    /// The measured tool (the ticks given to [`CpuMeter::finish`]).
    pub tool: f64,
    /// Dovecot's `imap` processes.
    pub imap: f64,
    /// Everything else that ran on the machine meanwhile (other builds,
    /// tests and benchmarks on a shared machine); 0 on a quiet one.
    pub others: f64,
}

impl CpuMeter {
    /// Starts a window; `master` is the Dovecot master whose `imap`
    /// children are sampled ([`Dovecot::master_pid`](crate::Dovecot::master_pid)),
    /// if known.
    pub fn start(master: Option<u32>) -> CpuMeter {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let imap = std::thread::spawn(move || {
            let Some(master) = master else { return 0 };
            let children = || -> Vec<u32> {
                std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .filter(|p| {
                        std::fs::read_to_string(format!("/proc/{p}/comm"))
                            .is_ok_and(|c| c.trim() == "imap")
                    })
                    .collect()
            };
            // Processes already running count from now; new ones from 0.
            let baseline: HashMap<u32, u64> = children()
                .into_iter()
                .filter_map(|p| Some((p, proc_stat(p)?.ticks)))
                .collect();
            let mut latest: HashMap<u32, u64> = HashMap::new();
            loop {
                let stopping = flag.load(Ordering::Acquire);
                for pid in children() {
                    if let Some(stat) = proc_stat(pid) {
                        latest.insert(pid, stat.ticks);
                    }
                }
                if stopping {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            latest
                .iter()
                .map(|(pid, ticks)| ticks.saturating_sub(baseline.get(pid).copied().unwrap_or(0)))
                .sum()
        });
        CpuMeter {
            stop,
            imap: Some(imap),
            busy_start: machine_busy_ticks(),
            own_start: proc_stat(std::process::id()).map_or(0, |s| s.ticks),
        }
    }

    /// Ends the window; `tool_ticks` is what the tool used in it.
    pub fn finish(mut self, tool_ticks: u64) -> CpuUse {
        let busy = machine_busy_ticks().saturating_sub(self.busy_start);
        let own = proc_stat(std::process::id())
            .map_or(0, |s| s.ticks)
            .saturating_sub(self.own_start);
        self.stop.store(true, Ordering::Release);
        let imap = self
            .imap
            .take()
            .and_then(|thread| thread.join().ok())
            .unwrap_or(0);
        let others = busy.saturating_sub(tool_ticks + imap + own);
        CpuUse {
            tool: tool_ticks as f64 / TICKS_PER_SEC,
            imap: imap as f64 / TICKS_PER_SEC,
            others: others as f64 / TICKS_PER_SEC,
        }
    }
}

impl Drop for CpuMeter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_state_and_ticks_past_a_command_name_with_spaces() {
        let line = "4242 (tokio (rt) 1) S 1 4242 4242 0 -1 4194560 1200 0 0 0 731 96 0 0 20 0 5 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ticks, 731 + 96);
        assert!(parse_stat("4242 (cut)").is_none());
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn this_process_is_measured() {
        // The main thread waits for this test's thread.
        let own = proc_stat(std::process::id()).unwrap();
        assert!("RS".contains(own.state), "{own:?}");
        assert!(proc_stat(u32::MAX).is_none());
        let threads = thread_cpu(std::process::id());
        assert!(threads.len() >= 2, "{threads:?}");
    }
}
