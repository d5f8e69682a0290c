//! Local safety: what a user on the same machine, a file swapped under a
//! publish, a crafted version or name, or a killed command could do to a
//! store, and the defences (docs/security/local.md).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use peermirror::announce::MAX_VERSION;
use peermirror::control::{Commands, ErrorKind, Request};
use peermirror::keys::MasterKey;
use peermirror::node::{LocalStore, Node, NodeConfig};
use peermirror::publish::{publish, PublishError, PublishOptions};
use peermirror::store::{Store, StoreError};

use crate::harness::*;

fn opts(name: &str) -> PublishOptions {
    PublishOptions {
        name: Some(name.into()),
        ..PublishOptions::default()
    }
}

fn saved_key(dir: &Path) -> (std::path::PathBuf, MasterKey) {
    let path = dir.join("master.key");
    MasterKey::generate().save_new(&path).unwrap();
    let key = MasterKey::load(&path).unwrap();
    (path, key)
}

#[test]
fn a_tree_holding_the_master_key_is_not_published() {
    let h = Harness::new();
    let src = h.path("src");
    fs::create_dir_all(src.join("keys")).unwrap();
    fs::write(src.join("readme"), b"hello").unwrap();
    let (_, key) = saved_key(&src.join("keys"));
    let store = Store::open(&h.path("data")).unwrap();
    let e = publish(&store, &key, &src, &opts("c"), &mut |_, _| {}).unwrap_err();
    assert!(matches!(e, PublishError::ContainsKey(_)), "{e}");
    assert!(store.latest(&key.collection()).unwrap().is_none());
    // A hard link to the key is the same file.
    let (key_path, key) = saved_key(h.dir());
    fs::remove_dir_all(src.join("keys")).unwrap();
    fs::hard_link(&key_path, src.join("innocent.txt")).unwrap();
    let e = publish(&store, &key, &src, &opts("c"), &mut |_, _| {}).unwrap_err();
    assert!(matches!(e, PublishError::ContainsKey(_)), "{e}");
    fs::remove_file(src.join("innocent.txt")).unwrap();
    publish(&store, &key, &src, &opts("c"), &mut |_, _| {}).unwrap();
}

/// Publishes a tree of small files `a` and `b`, running `swap` on `b` once
/// `a` has been read (after the scan, before `b` is opened).
fn publish_with_swap(
    h: &Harness,
    swap: impl Fn(&Path),
) -> Result<peermirror::publish::PublishReport, PublishError> {
    let src = h.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), b"first file").unwrap();
    fs::write(src.join("b"), b"second file").unwrap();
    let (_, key) = saved_key(h.dir());
    let store = Store::open(&h.path("data")).unwrap();
    let mut swapped = false;
    let b = src.join("b");
    let r = publish(&store, &key, &src, &opts("c"), &mut |_, _| {
        if !swapped {
            swapped = true;
            swap(&b);
        }
    });
    assert!(swapped, "the swap never ran");
    r
}

#[test]
fn a_file_swapped_for_a_link_after_the_scan_is_not_read() {
    let h = Harness::new();
    let secret = h.path("secret");
    fs::write(&secret, b"outside the tree").unwrap();
    let e = publish_with_swap(&h, |b| {
        fs::remove_file(b).unwrap();
        std::os::unix::fs::symlink(&secret, b).unwrap();
    })
    .unwrap_err();
    assert!(matches!(e, PublishError::Changed(_)), "{e}");
}

#[test]
fn a_file_swapped_for_a_fifo_after_the_scan_does_not_hang_publish() {
    let (tx, rx) = std::sync::mpsc::channel();
    // On its own thread: without the defence, opening the FIFO blocks.
    std::thread::spawn(move || {
        let h = Harness::new();
        let r = publish_with_swap(&h, |b| {
            fs::remove_file(b).unwrap();
            let c = std::ffi::CString::new(b.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        });
        let _ = tx.send(r.map(|_| ()).map_err(|e| e.to_string()));
    });
    let r = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("publish hung on a FIFO swapped into the tree");
    let e = r.unwrap_err();
    assert!(e.contains("changed while it was being published"), "{e}");
}

#[test]
fn a_file_replaced_by_another_after_the_scan_is_refused() {
    let h = Harness::new();
    let other = h.path("other");
    fs::write(&other, b"not what was scanned").unwrap();
    let e = publish_with_swap(&h, |b| fs::rename(&other, b).unwrap()).unwrap_err();
    assert!(matches!(e, PublishError::Changed(_)), "{e}");
}

#[test]
fn versions_stay_below_the_maximum_and_never_overflow() {
    let h = Harness::new();
    let src = h.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    let (_, key) = saved_key(h.dir());
    let store = Store::open(&h.path("data")).unwrap();
    for v in [0, MAX_VERSION + 1, u64::MAX] {
        let o = PublishOptions {
            version: Some(v),
            ..opts("c")
        };
        let e = publish(&store, &key, &src, &o, &mut |_, _| {}).unwrap_err();
        assert!(matches!(e, PublishError::BadVersion(x) if x == v), "{e}");
    }
    assert!(store.latest(&key.collection()).unwrap().is_none());
    let o = PublishOptions {
        version: Some(MAX_VERSION),
        ..opts("c")
    };
    publish(&store, &key, &src, &o, &mut |_, _| {}).unwrap();
    // The next default version would pass the maximum: refused, not wrapped.
    let e = publish(&store, &key, &src, &opts("c"), &mut |_, _| {}).unwrap_err();
    assert!(matches!(e, PublishError::BadVersion(_)), "{e}");
}

#[test]
fn names_are_ascii_and_a_shared_or_look_alike_name_is_ambiguous() {
    let h = Harness::new();
    let src = h.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    let data = h.path("data");
    let real = MasterKey::generate();
    let fake = MasterKey::generate();
    {
        let store = Store::open(&data).unwrap();
        // A Cyrillic "а" posing as a Latin one.
        let e = publish(&store, &fake, &src, &opts("im\u{0430}ges"), &mut |_, _| {}).unwrap_err();
        assert!(matches!(e, PublishError::BadName(_)), "{e}");
        publish(&store, &real, &src, &opts("images"), &mut |_, _| {}).unwrap();
        assert_eq!(
            store.find_collection("images").unwrap(),
            Some(real.collection())
        );
        publish(&store, &fake, &src, &opts("1mages"), &mut |_, _| {}).unwrap();
        for name in ["images", "1mages"] {
            match store.find_collection(name) {
                Err(StoreError::AmbiguousName { ids, .. }) => {
                    assert_eq!(ids.len(), 2);
                    assert!(ids.contains(&real.collection()));
                    assert!(ids.contains(&fake.collection()));
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        // The id always works.
        assert_eq!(
            store
                .find_collection(&real.collection().to_string())
                .unwrap(),
            Some(real.collection())
        );
    }
    let local = LocalStore::open(&data).unwrap();
    let e = local
        .call(
            Request::Export {
                collection: "images".into(),
                dest: h.path("out"),
                version: None,
                replace: false,
            },
            &mut |_, _| {},
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Usage, "{e}");
    assert!(e.message.contains(&real.collection().to_string()), "{e}");
    assert!(e.message.contains(&fake.collection().to_string()), "{e}");
    assert!(!h.path("out").exists());
}

#[test]
fn a_killed_export_leaves_no_temporary_tree_behind_the_next_one() {
    let h = Harness::new();
    let src = h.path("src");
    sample_tree(&src, 1);
    let key = MasterKey::generate();
    let store = Store::open(&h.path("data")).unwrap();
    publish(&store, &key, &src, &opts("c"), &mut |_, _| {}).unwrap();
    // What an export killed mid-way leaves: its temporary tree, named after
    // a process that is gone.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = h.path(&format!(".out.peermirror-tmp-{dead}"));
    fs::create_dir_all(stale.join("half/written")).unwrap();
    fs::write(stale.join("half/written/file"), b"partial").unwrap();
    fs::set_permissions(stale.join("half"), fs::Permissions::from_mode(0o755)).unwrap();
    // One of a live process (this one's parent) is left alone.
    let live = h.path(&format!(
        ".out.peermirror-tmp-{}",
        std::os::unix::process::parent_id()
    ));
    fs::create_dir_all(&live).unwrap();
    store
        .export(&key.collection(), None, &h.path("out"), false)
        .unwrap();
    assert_same_tree(&src, &h.path("out"));
    assert!(!stale.exists(), "the stale export tree is still there");
    assert!(live.exists(), "a live export's tree was removed");
}

/// A node on `data` serving its control socket.
async fn node_with_socket(data: &Path) -> std::sync::Arc<Node> {
    let mut cfg = NodeConfig::loopback(data.to_path_buf(), vec![], vec![]);
    cfg.control = true;
    Node::start(cfg, std::future::pending())
        .await
        .expect("node start")
}

/// inotify events (mask, name) on one directory.
struct Watch(std::os::fd::OwnedFd);

impl Watch {
    fn new(dir: &Path) -> Watch {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscalls; the fd is owned from here on.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        let mask = libc::IN_CREATE | libc::IN_ATTRIB | libc::IN_MOVED_TO;
        use std::os::fd::AsRawFd;
        // SAFETY: valid fd and NUL-terminated path.
        assert!(unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) } >= 0);
        Watch(fd)
    }

    fn events(&self) -> Vec<(u32, String)> {
        use std::os::fd::AsRawFd;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            // SAFETY: reading into a buffer of the given length.
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return out;
            }
            let mut at = 0usize;
            while at + 16 <= n as usize {
                let word =
                    |i: usize| u32::from_ne_bytes(buf[at + i..at + i + 4].try_into().unwrap());
                let (mask, len) = (word(4), word(12) as usize);
                let name = &buf[at + 16..at + 16 + len];
                let name = String::from_utf8_lossy(name)
                    .trim_end_matches('\0')
                    .to_string();
                out.push((mask, name));
                at += 16 + len;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_is_never_reachable_with_loose_permissions() {
    let h = Harness::new();
    let data = h.path("n");
    fs::create_dir_all(&data).unwrap();
    let watch = Watch::new(&data);
    let node = node_with_socket(&data).await;
    let sock = peermirror::control::socket_path(&data);
    let md = fs::symlink_metadata(&sock).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    let events: Vec<_> = watch
        .events()
        .into_iter()
        .filter(|(_, n)| n == "control.sock")
        .collect();
    // The socket arrives by rename, already 0600; it is never created at
    // its public path and changed afterwards.
    assert!(
        events.iter().any(|(m, _)| m & libc::IN_MOVED_TO != 0),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .all(|(m, _)| m & (libc::IN_CREATE | libc::IN_ATTRIB) == 0),
        "the socket was created, then its mode changed: {events:?}"
    );
    // And it works.
    let c = peermirror::control::Client::connect(&data).expect("socket answers");
    assert!(c.call(Request::Status, &mut |_, _| {}).is_ok());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_requests_are_bounded_in_size_and_time() {
    use std::io::{BufRead, Write};
    let h = Harness::new();
    let data = h.path("n");
    let node = node_with_socket(&data).await;
    let sock = peermirror::control::socket_path(&data);
    let idle = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let started = std::time::Instant::now();
    // A request line that never ends.
    let s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut w = s.try_clone().unwrap();
    std::thread::spawn(move || {
        let block = vec![b'a'; 1 << 20];
        for _ in 0..64 {
            if w.write_all(&block).is_err() {
                return;
            }
        }
    });
    let answer = tokio::task::spawn_blocking(move || {
        s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(&s)
            .read_line(&mut line)
            .map(|_| line)
    })
    .await
    .unwrap()
    .expect("no answer to an endless request");
    assert!(answer.contains("longer than"), "{answer}");
    // A client that sends nothing is answered and dropped.
    let answer = tokio::task::spawn_blocking(move || {
        idle.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(&idle)
            .read_line(&mut line)
            .map(|_| line)
    })
    .await
    .unwrap()
    .expect("an idle client was never dropped");
    assert!(answer.contains("in time"), "{answer}");
    assert!(started.elapsed() < std::time::Duration::from_secs(25));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_private() {
    let h = Harness::new();
    let fresh = h.path("deep/fresh");
    drop(Store::open(&fresh).unwrap());
    assert_eq!(
        fs::metadata(&fresh).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // An existing open one is kept, with a warning.
    let n = h.start("open", vec![], vec![]).await;
    fs::set_permissions(n.dir(), fs::Permissions::from_mode(0o755)).unwrap();
    n.shutdown().await;
    drop(n);
    let n = h.start("open", vec![], vec![]).await;
    n.wait_log("accessible by group or others").await;
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starting_while_a_command_holds_the_store_waits_for_it() {
    let h = Harness::new();
    let held = Store::open(&h.path("n")).unwrap();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(1));
        drop(held);
    });
    let n = h.start("n", vec![], vec![]).await;
    n.wait_log("in use by another process; waiting").await;
    n.shutdown().await;
}

#[test]
fn a_command_run_while_a_node_starts_waits_for_it() {
    let h = Harness::new();
    let data = h.path("b");
    let held = Store::open(&data).unwrap();
    let cli = h
        .cli_at(&data)
        .cmd()
        .args(["status", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    drop(held);
    // The node starts: the command gets the store first or asks the node.
    let mut node = h.binary("b", &[]);
    let out = cli.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["data"].as_str().unwrap().ends_with("b"));
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_then_expired_announcement_is_warned_about_and_shown() {
    let h = Harness::new();
    let src = h.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"short-lived").unwrap();
    let key = MasterKey::generate();
    let c = key.collection();
    let master = h.start("master", vec![], vec![]).await;
    let o = PublishOptions {
        valid_for: 20,
        ..PublishOptions::default()
    };
    master
        .node()
        .publish(key.clone(), src.clone(), o)
        .await
        .unwrap();
    let mirror = h.start("mirror", master.addrs().to_vec(), vec![c]).await;
    mirror.wait_version(c, 1).await;
    let fresh = mirror.status().await;
    let cs = &fresh.collections[0];
    assert_eq!(cs.freshness, Some(peermirror::announce::Freshness::Fresh));
    // A tenth of the validity left: the master is told to publish again.
    master
        .wait_log("expires soon; the master must publish again")
        .await;
    for n in [&master, &mirror] {
        n.wait_log("the newest announcement has expired").await;
    }
    let st = mirror.status().await;
    let cs = &st.collections[0];
    assert_eq!(cs.freshness, Some(peermirror::announce::Freshness::Expired));
    assert!(cs.expires_at.unwrap() <= peermirror::announce::now());
    // The same from the store opened directly, as the CLI shows it.
    master.shutdown().await;
    mirror.shutdown().await;
    let dir = mirror.dir().to_path_buf();
    drop((master, mirror));
    let out = h.cli_at(&dir).run(&["status"]);
    assert!(out.contains("EXPIRED"), "{out}");
}
