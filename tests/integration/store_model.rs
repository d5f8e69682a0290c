//! Model test: random publishes, gcs, restarts and exports against a plain
//! in-memory model of which versions exist and what they contain.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use peermirror::keys::MasterKey;
use peermirror::publish::{publish, PublishOptions};
use peermirror::store::Store;
use rand::{RngExt, SeedableRng};

use crate::harness::*;

type Tree = BTreeMap<String, Vec<u8>>;

fn write_tree(dir: &Path, tree: &Tree) {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).unwrap();
    for (p, data) in tree {
        let path = dir.join(p);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }
}

fn read_tree(dir: &Path) -> Tree {
    let mut t = Tree::new();
    for e in walkdir::WalkDir::new(dir).min_depth(1) {
        let e = e.unwrap();
        if e.file_type().is_file() {
            let rel = e
                .path()
                .strip_prefix(dir)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            t.insert(rel, fs::read(e.path()).unwrap());
        }
    }
    t
}

#[test]
fn random_operations_with_restarts_match_the_model() {
    let h = Harness::new();
    let key = MasterKey::generate();
    let c = key.collection();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut store = Some(Store::open(&h.path("data")).unwrap());
    let mut model: BTreeMap<u64, Tree> = BTreeMap::new();
    let mut tree = Tree::new();
    let src = h.path("src");
    for step in 0..40 {
        let s = store.as_ref().unwrap();
        match rng.random_range(0..10) {
            // Change the tree and publish it.
            0..=4 => {
                for _ in 0..rng.random_range(1..4) {
                    let name = format!("d{}/f{}", rng.random_range(0..3), rng.random_range(0..6));
                    if rng.random_bool(0.2) {
                        tree.remove(&name);
                    } else {
                        let len = rng.random_range(0..(600 << 10));
                        tree.insert(name, random_bytes(len, rng.random()));
                    }
                }
                write_tree(&src, &tree);
                let r = publish(s, &key, &src, &PublishOptions::default(), &mut |_, _| {}).unwrap();
                model.insert(r.announcement.body.version, tree.clone());
            }
            // Collect, keeping 1-3 versions.
            5 | 6 => {
                let keep = rng.random_range(1..4);
                s.gc(keep).unwrap();
                while model.len() > keep {
                    let oldest = *model.keys().next().unwrap();
                    model.remove(&oldest);
                }
            }
            // Restart.
            7 | 8 => {
                drop(store.take());
                store = Some(Store::open(&h.path("data")).unwrap());
            }
            // Verify.
            _ => {
                let r = s.verify(false).unwrap();
                assert!(r.problems.is_empty(), "step {step}: {:?}", r.problems);
            }
        }
        // Every version the model holds exports exactly; no other does.
        let s = store.as_ref().unwrap();
        let held = s.versions(&c).unwrap();
        assert_eq!(
            held,
            model.keys().copied().collect::<Vec<_>>(),
            "step {step}"
        );
        for (v, t) in &model {
            let dest = h.path(&format!("out-{step}-{v}"));
            s.export(&c, Some(*v), &dest, false).unwrap();
            assert_eq!(&read_tree(&dest), t, "step {step} version {v}");
            fs::remove_dir_all(&dest).unwrap();
        }
    }
}
