//! Child processes for end-to-end tests: started once they print their
//! first line (within a bound), stopped with SIGTERM, killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // The reader lives as long as the child's output: it drains it so
        // the child never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok);
            let _ = tx.send(first);
            for _ in lines {}
        });
        let mut process = Self {
            child,
            name: name.to_string(),
        };
        match rx.recv_timeout(within) {
            Ok(Some(line)) => {
                let line = line.trim().to_string();
                (process, line)
            }
            Ok(None) => {
                let status = process.child.wait().ok();
                panic!("{name} exited before starting ({status:?}; see its log above)")
            }
            Err(_) => panic!("{name} printed nothing within {within:?}"),
        }
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
