//! Private servers for tests that inject faults: Redis, PostgreSQL,
//! MariaDB and RabbitMQ started by the test on a free port of 127.0.0.1,
//! with their data in a temporary directory, so a restart, a killed client
//! or a global setting never touches the machine's shared servers.
//!
//! A server is stopped and its directory removed when dropped; if the test
//! process is killed instead, a watcher does it (see
//! [`run_while_this_process_lives`](super::run_while_this_process_lives)).
//! Every wait is bounded and fails naming the server.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a server may take to accept connections (RabbitMQ boots in
/// 5-8 s on this machine kind; the rest in well under 2 s).
pub const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Longest a server may take to stop before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `redis-server`.
    Redis,
    /// PostgreSQL (`initdb` + `postgres`, run as the `postgres` user when
    /// the test runs as root).
    Postgres,
    /// MariaDB (`mariadb-install-db` + `mariadbd`).
    MariaDb,
    /// A RabbitMQ node of its own (name, ports, cookie, data).
    RabbitMq,
    /// `nats-server` with JetStream, `max_payload` 64 MiB.
    Nats,
}

/// A private server; stopped, and its files removed, when dropped.
#[derive(Debug)]
pub struct Server {
    kind: Kind,
    port: u16,
    dist_port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

/// A free TCP port on 127.0.0.1 (free when asked; servers bind it at once).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run it: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn postgres_bin(tool: &str) -> PathBuf {
    let base = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(base)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    match versions.last() {
        Some(v) => v.join("bin").join(tool),
        None => PathBuf::from(tool),
    }
}

fn is_root() -> bool {
    // The effective uid, as `id -u` prints it.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `cmd` run as the `postgres` user when this process is root (PostgreSQL
/// refuses root); `setpriv` execs, so the child's pid is the server's.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// A new directory `name` for a private server's files: in memory
/// (`/dev/shm`) where the machine has it, so that a server initialising its
/// files (a database writing and syncing its logs) does not hold up the
/// disk the shared servers sync to; else in the temporary directory.
fn data_root(name: &str) -> PathBuf {
    let shm = Path::new("/dev/shm").join(name);
    if std::fs::create_dir_all(&shm).is_ok() {
        return shm;
    }
    let dir = std::env::temp_dir().join(name);
    std::fs::create_dir_all(&dir).expect("server directory");
    dir
}

impl Server {
    /// Start a server of `kind`; `extra` are more command-line options of
    /// the server (`--max-allowed-packet=1M` for MariaDB, say).
    pub fn start(kind: Kind, extra: &[&str]) -> Self {
        let name = super::unique(&format!("{kind:?}").to_lowercase());
        let dir = data_root(&name);
        let mut server = Self {
            kind,
            port: free_port(),
            dist_port: free_port(),
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        super::run_while_this_process_lives(
            &[],
            &format!(
                "pkill -KILL -f '{dir}' 2>/dev/null; rm -rf '{dir}'",
                dir = server.dir.display()
            ),
        );
        server.init();
        server.resume();
        if kind == Kind::Postgres {
            run(
                Command::new("psql")
                    .args(["-h", "127.0.0.1", "-p", &server.port.to_string()])
                    .args(["-U", "postgres", "-c", "CREATE DATABASE test"]),
                "psql CREATE DATABASE",
            );
        }
        if kind == Kind::MariaDb {
            run(
                Command::new("mariadb")
                    .args(["--no-defaults", "-h", "127.0.0.1", "-P"])
                    .arg(server.port.to_string())
                    .args(["-u", "root", "-e", "CREATE DATABASE test"]),
                "mariadb CREATE DATABASE",
            );
        }
        server
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL a client of the pipeline uses (database `test`).
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
            Kind::Postgres => format!("postgres://postgres@127.0.0.1:{}/test", self.port),
            Kind::MariaDb => format!("mysql://root@127.0.0.1:{}/test", self.port),
            Kind::RabbitMq => format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port),
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
        }
    }

    fn node(&self) -> String {
        format!("pipeline-test-{}@localhost", self.port)
    }

    /// `rabbitmqctl` aimed at this node (RabbitMQ only).
    pub fn rabbitmqctl(&self, args: &[&str]) -> String {
        assert_eq!(
            self.kind,
            Kind::RabbitMq,
            "rabbitmqctl of a {:?}",
            self.kind
        );
        let mut cmd = Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl");
        self.rabbit_env(&mut cmd);
        cmd.args(["-n", &self.node(), "-q"]).args(args);
        run(&mut cmd, &format!("rabbitmqctl {args:?}"))
    }

    fn rabbit_env(&self, cmd: &mut Command) {
        let d = &self.dir;
        cmd.env("HOME", d)
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_NODENAME", self.node())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_BASE", d)
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("rabbit.pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1");
    }

    /// One-time set-up of the data directory.
    fn init(&mut self) {
        let d = self.dir.clone();
        match self.kind {
            Kind::Redis => {}
            Kind::Nats => {
                std::fs::write(d.join("nats.conf"), "max_payload: 67108864\n")
                    .expect("NATS configuration");
            }
            Kind::Postgres => {
                if is_root() {
                    run(
                        Command::new("chown").args(["postgres:postgres"]).arg(&d),
                        "chown the PostgreSQL directory",
                    );
                }
                run(
                    as_postgres(&postgres_bin("initdb"))
                        .arg("-D")
                        .arg(d.join("data"))
                        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
                        .args(["--locale=C.UTF-8", "--no-sync", "--no-instructions"]),
                    "initdb",
                );
            }
            Kind::MariaDb => {
                run(
                    Command::new("mariadb-install-db")
                        .arg("--no-defaults")
                        .arg(format!("--datadir={}", d.join("data").display()))
                        .args(["--user=root", "--auth-root-authentication-method=normal"])
                        .args(["--skip-test-db", "--skip-name-resolve"])
                        .args(MARIADB_FAST),
                    "mariadb-install-db",
                );
            }
            Kind::RabbitMq => {
                for sub in ["mnesia", "log"] {
                    std::fs::create_dir_all(d.join(sub)).expect("RabbitMQ directory");
                }
                let write = |name: &str, text: String| {
                    std::fs::write(d.join(name), text).expect("RabbitMQ file");
                };
                write("rabbitmq-env.conf", String::new());
                write("enabled_plugins", "[].\n".into());
                write(
                    "rabbitmq.conf",
                    format!("listeners.tcp.1 = 127.0.0.1:{}\n", self.port),
                );
                write(
                    ".erlang.cookie",
                    super::unique("cookie").replace(['-', '_'], ""),
                );
                run(
                    Command::new("chmod")
                        .arg("400")
                        .arg(d.join(".erlang.cookie")),
                    "chmod the cookie",
                );
            }
        }
    }

    /// Start the server process (again) and wait until it accepts clients.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "{:?} is running already", self.kind);
        let d = self.dir.clone();
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            Kind::Redis => {
                let mut c = Command::new("redis-server");
                c.args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
                    .args(["--appendonly", "no", "--dir"])
                    .arg(&d);
                c
            }
            Kind::Postgres => {
                let mut c = as_postgres(&postgres_bin("postgres"));
                c.arg("-D")
                    .arg(d.join("data"))
                    .args(["-p", &port, "-c", "listen_addresses=127.0.0.1"])
                    .arg("-c")
                    .arg(format!("unix_socket_directories={}", d.display()))
                    .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                    .args(["-c", "full_page_writes=off"]);
                c
            }
            Kind::MariaDb => {
                let mut c = Command::new("mariadbd");
                c.arg("--no-defaults")
                    .arg(format!("--datadir={}", d.join("data").display()))
                    .arg(format!("--port={port}"))
                    .arg("--bind-address=127.0.0.1")
                    .arg(format!("--socket={}", d.join("mysqld.sock").display()))
                    .arg(format!("--pid-file={}", d.join("mysqld.pid").display()))
                    .arg(format!("--log-error={}", d.join("mysqld.err").display()))
                    .arg(format!("--tmpdir={}", d.display()))
                    .args(["--user=root", "--skip-name-resolve", "--sync-frm=0"])
                    .args(["--character-set-server=utf8mb4"])
                    .args(MARIADB_FAST);
                c
            }
            Kind::RabbitMq => {
                let mut c = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
                self.rabbit_env(&mut c);
                c
            }
            Kind::Nats => {
                let mut c = Command::new("nats-server");
                c.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
                    .arg(d.join("jetstream"))
                    .arg("-c")
                    .arg(d.join("nats.conf"));
                c
            }
        };
        cmd.args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: stopping it reaches every process
            // it started (RabbitMQ's shell wrapper starts the VM).
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", self.kind));
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.ready() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                panic!(
                    "{:?} exited while starting ({status}); files in {}",
                    self.kind,
                    self.dir.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{:?} did not accept clients within {START_TIMEOUT:?}",
                self.kind
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ready(&self) -> bool {
        let port = self.port.to_string();
        let quiet = |cmd: &mut Command| {
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        match self.kind {
            Kind::Redis => quiet(Command::new("redis-cli").args(["-p", &port, "ping"])),
            Kind::Nats => std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok(),
            Kind::Postgres => quiet(Command::new(postgres_bin("pg_isready")).args([
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
            ])),
            Kind::MariaDb => quiet(
                Command::new("mysqladmin")
                    .args(["--no-defaults", "-h", "127.0.0.1", "-P", &port])
                    .args(["-u", "root", "ping"]),
            ),
            Kind::RabbitMq => {
                let mut c = Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl");
                self.rabbit_env(&mut c);
                c.args(["-n", &self.node(), "-q", "wait", "--timeout", "10"])
                    .arg(self.dir.join("rabbit.pid"));
                quiet(&mut c) && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            }
        }
    }

    /// Stop the server (a clean, fast shutdown; killed after
    /// [`STOP_TIMEOUT`]); its data stays for [`resume`](Self::resume).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // PostgreSQL's fast shutdown is SIGINT; the others stop on SIGTERM.
        let signal = if self.kind == Kind::Postgres {
            "-INT"
        } else {
            "-TERM"
        };
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", child.id())])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    eprintln!(
                        "{:?} did not stop within {STOP_TIMEOUT:?}; killing it",
                        self.kind
                    );
                    break;
                }
            }
        }
        // Whatever is left of its process group.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = child.wait();
    }
}

/// MariaDB options that make a throwaway server start and stop fast.
const MARIADB_FAST: [&str; 6] = [
    "--skip-log-bin",
    "--innodb-buffer-pool-size=16M",
    "--innodb-log-file-size=8M",
    "--innodb-flush-log-at-trx-commit=0",
    "--innodb-doublewrite=0",
    "--innodb-flush-method=nosync",
];

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
