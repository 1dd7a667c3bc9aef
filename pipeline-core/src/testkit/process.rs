//! Child processes for end-to-end tests: started once they print their
//! first line (within a bound), stopped with SIGTERM, killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The first line `child` prints on its piped standard output, trimmed,
/// waited for at most `within`; the rest of its output is drained so it
/// never blocks on a full pipe. The child is also killed if this test
/// process dies first (see [`kill_with_this_process`]). Panics, naming
/// `name` (and killing the child), if it exits or stays silent.
pub fn first_line(child: &mut Child, name: &str, within: Duration) -> String {
    kill_with_this_process(child.id());
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().and_then(Result::ok);
        let _ = tx.send(first);
        for _ in lines {}
    });
    match rx.recv_timeout(within) {
        Ok(Some(line)) => line.trim().to_string(),
        Ok(None) => {
            let status = child.wait().ok();
            panic!("{name} exited before starting ({status:?}; see its log above)")
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} printed nothing within {within:?}")
        }
    }
}

/// Have `pid` killed once this test process is gone, however it ends (a
/// timeout's SIGINT, a crash): one watcher per test process kills every
/// pid registered, so no child outlives its test run.
pub fn kill_with_this_process(pid: u32) {
    use std::io::Write;
    static LIST: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let list = LIST.get_or_init(|| {
        let list =
            std::env::temp_dir().join(format!("pipeline-test-children-{}", std::process::id()));
        super::run_while_this_process_lives(
            &[],
            &format!(
                "xargs -r kill -9 < '{f}' 2>/dev/null; rm -f '{f}'",
                f = list.display()
            ),
        );
        list
    });
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(list)
    {
        let _ = writeln!(f, "{pid}");
    }
}

/// A running child process; killed (and reaped) when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    name: String,
}

impl Process {
    /// Start `cmd` (its standard output piped, standard error inherited)
    /// and wait up to `within` for its first line of output, which is
    /// returned trimmed. Panics, naming `name`, if it exits or stays
    /// silent.
    pub fn start(mut cmd: Command, name: &str, within: Duration) -> (Self, String) {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let line = first_line(&mut child, name, within);
        let process = Self {
            child,
            name: name.to_string(),
        };
        (process, line)
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait up to `within` for it to exit (SIGKILL after).
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        eprintln!("{} did not stop within {within:?}; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// SIGKILL now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
