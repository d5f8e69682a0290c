//! Crash safety: `publish` killed with SIGKILL at many points leaves a store
//! that opens, verifies, and completes the next publish.

use std::fs;
use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn publish_survives_sigkill_at_many_points() {
    let h = Harness::new();
    let (key, id) = h.keygen();
    let src = h.path("src");
    fs::create_dir_all(src.join("many")).unwrap();
    for i in 0..4 {
        fs::write(src.join(format!("part{i}.img")), random_bytes(24 << 20, i)).unwrap();
    }
    for i in 0..400 {
        fs::write(
            src.join(format!("many/{i}.txt")),
            random_bytes(2000 + i, 1000 + i as u64),
        )
        .unwrap();
    }

    // Time one publish into a scratch store to spread the kills across it.
    let t = Instant::now();
    let mut probe = std::process::Command::new(BIN);
    probe.arg("--data").arg(h.path("probe"));
    let out = probe
        .args(["publish", "--key", &key, src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let full = t.elapsed();

    let mut killed_midway = 0;
    for step in 1..=8u32 {
        let delay = full
            .mul_f64(step as f64 / 9.0)
            .max(Duration::from_millis(5));
        let mut child = h
            .cmd()
            .args(["publish", "--key", &key, src.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            killed_midway += 1;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // The store opens and whatever it holds is sound.
        let out = h.run_any(&["verify"]);
        assert!(
            out.status.success(),
            "verify after kill at {delay:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(
        killed_midway >= 4,
        "only {killed_midway} kills landed mid-publish"
    );

    h.run(&["publish", "--key", &key, src.to_str().unwrap()]);
    assert!(h.run(&["verify"]).contains(" 0 problems"));
    let dest = h.path("dest");
    h.run(&["export", &id, dest.to_str().unwrap()]);
    assert_same_tree(&src, &dest);
}
