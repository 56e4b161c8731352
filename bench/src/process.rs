//! Child server processes: starting them in their own process group with logs in files,
//! stopping them, and reading their CPU time and peak RSS from `/proc`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// Grace period between SIGTERM and SIGKILL when stopping a child.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// `AT_CLKTCK`, the auxiliary vector entry holding the clock ticks per second of `/proc` times.
const AT_CLKTCK: u64 = 17;

/// A server process started by the harness, leader of its own process group.
///
/// The group is sent SIGKILL on drop, so children also end when the harness returns early.
#[derive(Debug)]
pub(crate) struct ManagedChild {
    /// Short name shown in the results, such as `gateway`.
    pub(crate) label: String,
    /// Process id, which is also the process group id.
    pub(crate) pid: u32,
    /// File receiving the child's stderr (and stdout unless the caller reads it).
    pub(crate) log_path: PathBuf,
    child: Option<Child>,
}

impl ManagedChild {
    /// Starts `command` with stderr, and stdout unless `pipe_stdout`, appended to
    /// `<log_dir>/<label>.log`.
    pub(crate) fn spawn(
        label: &str,
        mut command: Command,
        log_dir: &Path,
        pipe_stdout: bool,
    ) -> anyhow::Result<Self> {
        let log_path = log_dir.join(format!("{label}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("failed to create the log file {}", log_path.display()))?;
        let stdout = if pipe_stdout {
            Stdio::piped()
        } else {
            Stdio::from(
                log.try_clone()
                    .context("failed to duplicate the log file handle")?,
            )
        };
        command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::from(log))
            .process_group(0)
            .kill_on_drop(true);

        let child = command.spawn().with_context(|| {
            format!(
                "failed to start {label}: {:?}",
                command.as_std().get_program()
            )
        })?;
        let Some(pid) = child.id() else {
            bail!("{label} exited before its process id could be read");
        };
        Ok(Self {
            label: label.to_owned(),
            pid,
            log_path,
            child: Some(child),
        })
    }

    /// Takes the piped stdout, if the child was started with `pipe_stdout`.
    pub(crate) fn take_stdout(&mut self) -> Option<tokio::process::ChildStdout> {
        self.child.as_mut().and_then(|child| child.stdout.take())
    }

    /// Returns an error with the log tail if the process has exited.
    pub(crate) fn check_running(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} was already stopped", self.label);
        };
        if let Some(status) = child
            .try_wait()
            .context("failed to poll the child process")?
        {
            bail!(
                "{} exited with {status}; log tail:\n{}",
                self.label,
                log_tail(&self.log_path)
            );
        }
        Ok(())
    }

    /// Sends SIGTERM to the process group, waits up to [`STOP_GRACE`], then sends SIGKILL.
    pub(crate) async fn stop(mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal_group(self.pid, "TERM");
        if tokio::time::timeout(STOP_GRACE, child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "{} did not exit within {STOP_GRACE:?} of SIGTERM; sending SIGKILL",
                self.label
            );
        }
        signal_group(self.pid, "KILL");
        let _ = child.wait().await;
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        if self.child.is_some() {
            signal_group(self.pid, "KILL");
        }
    }
}

/// Sends `signal` to the process group `pgid` with kill(1), because this crate forbids the
/// unsafe code a direct kill(2) call needs. A group that is already gone is not an error.
fn signal_group(pgid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Returns the last lines of a log file for error messages.
pub(crate) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// CPU time and peak resident set size of one process at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProcessUsage {
    /// User plus system CPU time of all threads so far.
    pub(crate) cpu: Duration,
    /// Peak resident set size since the process started (`VmHWM`), in KiB.
    pub(crate) peak_rss_kib: u64,
}

/// Reads the CPU time from `/proc/<pid>/stat` and `VmHWM` from `/proc/<pid>/status`.
pub(crate) fn read_usage(pid: u32, ticks_per_second: u64) -> anyhow::Result<ProcessUsage> {
    let stat_path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&stat_path)
        .with_context(|| format!("failed to read {stat_path}"))?;
    if has_exited(&stat) {
        bail!("process {pid} has exited");
    }
    let ticks =
        parse_cpu_ticks(&stat).with_context(|| format!("unexpected format of {stat_path}"))?;

    let status_path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&status_path)
        .with_context(|| format!("failed to read {status_path}"))?;
    let peak_rss_kib =
        parse_vm_hwm_kib(&status).with_context(|| format!("no VmHWM line in {status_path}"))?;

    let ticks_per_second = ticks_per_second.max(1);
    let cpu = Duration::from_secs(ticks / ticks_per_second)
        + Duration::from_nanos((ticks % ticks_per_second) * 1_000_000_000 / ticks_per_second);
    Ok(ProcessUsage { cpu, peak_rss_kib })
}

/// Returns utime + stime in clock ticks from the text of `/proc/<pid>/stat`.
///
/// The command name in field 2 may contain spaces and parentheses, so fields are counted
/// from the last `)`. Per proc(5), utime and stime are fields 14 and 15.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

/// Returns whether the state in `/proc/<pid>/stat` (field 3) is zombie or dead.
fn has_exited(stat: &str) -> bool {
    let state = stat
        .rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next());
    matches!(state, Some("Z" | "X" | "x"))
}

/// Returns the `VmHWM` value in KiB from the text of `/proc/<pid>/status`.
fn parse_vm_hwm_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Returns the clock ticks per second that `/proc` times use, from `AT_CLKTCK` in
/// `/proc/self/auxv`, or 100 (the Linux default on common architectures) if unreadable.
pub(crate) fn clock_ticks_per_second() -> u64 {
    std::fs::read("/proc/self/auxv")
        .ok()
        .and_then(|auxv| parse_auxv_clock_ticks(&auxv))
        .unwrap_or(100)
}

/// Finds `AT_CLKTCK` in a 64-bit auxiliary vector: (type, value) pairs of native-endian u64.
fn parse_auxv_clock_ticks(auxv: &[u8]) -> Option<u64> {
    auxv.chunks_exact(16).find_map(|entry| {
        let key = u64::from_ne_bytes(entry.get(..8)?.try_into().ok()?);
        let value = u64::from_ne_bytes(entry.get(8..)?.try_into().ok()?);
        (key == AT_CLKTCK).then_some(value)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_parse_after_command_name() {
        let stat = "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 100 0 0 0 37 5 0 0 20 0 3 0 99 1000 200";
        assert_eq!(parse_cpu_ticks(stat), Some(42));
    }

    #[test]
    fn zombie_state_counts_as_exited() {
        assert!(has_exited("77 (litellm) Z 1 77 77 0 -1 4194560 0"));
        assert!(!has_exited("77 (a) (Z) S 1 77 77 0 -1 4194560 0"));
    }

    #[test]
    fn vm_hwm_parses_kib() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t  1234 kB\nVmRSS:\t  1000 kB\n";
        assert_eq!(parse_vm_hwm_kib(status), Some(1234));
        assert_eq!(parse_vm_hwm_kib("Name:\tx\n"), None);
    }

    #[test]
    fn auxv_clock_ticks_found() {
        let mut auxv = Vec::new();
        for (key, value) in [(6_u64, 4096_u64), (AT_CLKTCK, 250), (0, 0)] {
            auxv.extend_from_slice(&key.to_ne_bytes());
            auxv.extend_from_slice(&value.to_ne_bytes());
        }
        assert_eq!(parse_auxv_clock_ticks(&auxv), Some(250));
        assert!(clock_ticks_per_second() > 0);
    }

    fn is_gone(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => has_exited(&stat),
            Err(_) => true,
        }
    }

    async fn wait_until_gone(pid: u32) -> bool {
        for _ in 0..100 {
            if is_gone(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Starts a shell that starts a `sleep` in the same process group and prints its pid.
    async fn spawn_shell_with_grandchild(log_dir: &Path) -> (ManagedChild, u32) {
        let mut command = Command::new("sh");
        command.args(["-c", "sleep 30 & echo $!; wait"]);
        let mut child = ManagedChild::spawn("shell", command, log_dir, true).unwrap();
        let stdout = child.take_stdout().unwrap();
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
        let grandchild: u32 = lines
            .next_line()
            .await
            .unwrap()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        (child, grandchild)
    }

    #[tokio::test]
    async fn stop_ends_the_whole_process_group() {
        let log_dir = tempfile::tempdir().unwrap();
        let (mut child, grandchild) = spawn_shell_with_grandchild(log_dir.path()).await;
        let pid = child.pid;
        child.check_running().unwrap();

        child.stop().await;
        assert!(wait_until_gone(pid).await, "shell {pid} still runs");
        assert!(
            wait_until_gone(grandchild).await,
            "grandchild {grandchild} still runs"
        );
    }

    #[tokio::test]
    async fn drop_kills_the_whole_process_group() {
        let log_dir = tempfile::tempdir().unwrap();
        let (child, grandchild) = spawn_shell_with_grandchild(log_dir.path()).await;
        drop(child);
        assert!(
            wait_until_gone(grandchild).await,
            "grandchild {grandchild} still runs"
        );
    }

    #[test]
    fn own_usage_is_readable() {
        let usage = read_usage(std::process::id(), clock_ticks_per_second()).unwrap();
        assert!(usage.peak_rss_kib > 0);
    }
}
