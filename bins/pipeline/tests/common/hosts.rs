//! Hosts on one machine for end-to-end tests: network namespaces joined by
//! veth links to a bridge in the test's own namespace, whose address (the
//! "gateway") forwards to the machine's shared servers. A host's link can
//! be cut and restored; everything is removed when the [`Net`] is dropped,
//! and by a watcher if the test process dies first. Needs root and
//! iproute2.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Run `ip ARGS`; panics with its error output when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e} (iproute2 is needed)"));
    assert!(
        out.status.success(),
        "ip {}: {} (these tests need root)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A test network: a bridge with the gateway address and the hosts on it.
pub struct Net {
    /// Unique short tag (names of namespaces and links start with `pt`).
    pub tag: String,
    /// `10.X.Y` of the network's `/24`.
    pub subnet: String,
    bridge: String,
    hosts: Mutex<Vec<Host>>,
    forwarders: Mutex<Vec<JoinHandle<()>>>,
}

/// A host: a network namespace with one address.
#[derive(Debug, Clone)]
pub struct Host {
    /// Namespace name, for `ip netns exec`.
    pub ns: String,
    /// Its address on the network.
    pub ip: String,
    /// The link's end in the test's namespace (cut it to isolate the host).
    veth: String,
}

impl Net {
    /// A new network `10.213.N.0/24` with the gateway at `.1`.
    pub fn create() -> Self {
        let tag = format!("{:04x}", fastrand::u16(..));
        let subnet = format!("10.213.{}", fastrand::u8(16..250));
        let bridge = format!("pt{tag}br");
        // Whatever happens to this process, the network goes with it.
        pipeline_core::testkit::run_while_this_process_lives(
            &[],
            &format!(
                "for n in $(ip netns list | awk '/^pt_{tag}_/ {{print $1}}'); do ip netns pids $n | xargs -r kill -9; ip netns delete $n; done; ip link delete {bridge} 2>/dev/null"
            ),
        );
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{subnet}.1/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        Self {
            tag,
            subnet,
            bridge,
            hosts: Mutex::new(Vec::new()),
            forwarders: Mutex::new(Vec::new()),
        }
    }

    /// The gateway's address, where [`Net::forward`] listens.
    pub fn gateway(&self) -> String {
        format!("{}.1", self.subnet)
    }

    /// A host named `name` at `.n` (2-254).
    pub fn host(&self, name: &str, n: u8) -> Host {
        let ns = format!("pt_{}_{name}", self.tag);
        let outside = format!("pt{}o{n}", self.tag);
        let inside = format!("pt{}i{n}", self.tag);
        let addr = format!("{}.{n}", self.subnet);
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &outside, "type", "veth", "peer", "name", &inside,
        ]);
        ip(&["link", "set", &inside, "netns", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &inside,
        ]);
        ip(&["-n", &ns, "link", "set", &inside, "up"]);
        ip(&["link", "set", &outside, "master", &self.bridge]);
        ip(&["link", "set", &outside, "up"]);
        let host = Host {
            ns,
            ip: addr,
            veth: outside,
        };
        self.hosts.lock().unwrap().push(host.clone());
        host
    }

    /// Cut `host` off the network (its link goes down).
    pub fn cut(&self, host: &Host) {
        ip(&["link", "set", &host.veth, "down"]);
    }

    /// Put `host` back on the network.
    pub fn restore(&self, host: &Host) {
        ip(&["link", "set", &host.veth, "up"]);
    }

    /// Forward `gateway:port` to `upstream` (a shared server on this
    /// machine's loopback): the hosts reach it over their links.
    pub async fn forward(&self, port: u16, upstream: &str) {
        let listener = TcpListener::bind((self.gateway().as_str(), port))
            .await
            .unwrap_or_else(|e| panic!("bind {}:{port}: {e}", self.gateway()));
        let upstream = upstream.to_string();
        let closed = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if closed.load(Ordering::Relaxed) {
                    break;
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        self.forwarders.lock().unwrap().push(task);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for f in self.forwarders.lock().unwrap().drain(..) {
            f.abort();
        }
        for h in self.hosts.lock().unwrap().drain(..) {
            // Whatever still runs in the namespace goes first.
            let _ = Command::new("sh")
                .args(["-c", &format!("ip netns pids {} | xargs -r kill -9", h.ns)])
                .status();
            let _ = Command::new("ip").args(["netns", "delete", &h.ns]).status();
        }
        let _ = Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .status();
    }
}
