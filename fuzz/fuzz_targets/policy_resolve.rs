//! Resolves arbitrary strings as server-sent paths against a fixed user home,
//! and checks them against the grant `~/base/**`.
//!
//! The home is made once per run in a temporary folder: `base/` (granted)
//! with `a/b`, a file, and symlinks out of it (`escape` → `other`, `up` →
//! `..`, `root` → `/`), within it (`down` → `a/b`) and dangling
//! (`dangling`); `link` → `base` and `other/into` → `base/a` from outside;
//! a sibling `baseline/`; the terminalwire home beside the user home.
//!
//! Invariants: `resolve` never panics; what it returns is absolute, has no
//! `.` or `..` component, no NUL, is at most `MAX_PATH_LEN` bytes, and
//! resolves to itself again; a path with a NUL is refused; a resolved path
//! is allowed (read or write) exactly when it is under the base folder (or
//! in the authority's storage).

#![no_main]

use std::path::{Component, Path, PathBuf};
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use terminalwire_policy::path::MAX_PATH_LEN;
use terminalwire_policy::{
    Access, Action, Authority, Entitlements, Home, PathGrant, PathPattern, Policy, resolve,
};

struct Fixture {
    _tmp: tempfile::TempDir,
    user_home: PathBuf,
    base: PathBuf,
    storage: PathBuf,
    entitlements: Entitlements,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let root = std::fs::canonicalize(tmp.path()).expect("canonical temp folder");
    let user_home = root.join("user");
    let base = user_home.join("base");
    for dir in ["base/a/b", "other/a", "baseline"] {
        std::fs::create_dir_all(user_home.join(dir)).expect("creating the fixture");
    }
    std::fs::write(base.join("file"), "x").expect("creating the fixture");
    let links: [(&Path, &str); 7] = [
        (&user_home.join("other"), "base/escape"),
        (Path::new(".."), "base/up"),
        (Path::new("/"), "base/root"),
        (Path::new("a/b"), "base/down"),
        (&user_home.join("nowhere"), "base/dangling"),
        (&base, "link"),
        (&base.join("a"), "other/into"),
    ];
    for (target, link) in links {
        std::os::unix::fs::symlink(target, user_home.join(link)).expect("creating the fixture");
    }
    let home = Home::at(root.join("tw"));
    let authority = Authority::parse("example.com").expect("an authority");
    let storage = home.storage_dir(&authority);
    std::fs::create_dir_all(&storage).expect("creating the fixture");
    let policy = Policy {
        paths: vec![PathGrant {
            pattern: PathPattern::parse("~/base/**").expect("a valid pattern"),
            access: Access::ReadWrite,
            mode: None,
        }],
        ..Policy::default()
    };
    let url = url::Url::parse("wss://example.com/terminal").expect("a URL");
    let entitlements =
        Entitlements::new(&url, &home, &policy, &user_home, &[]).expect("entitlements");
    Fixture {
        _tmp: tmp,
        user_home,
        base,
        storage,
        entitlements,
    }
});

fuzz_target!(|data: &[u8]| {
    let raw = String::from_utf8_lossy(data);
    let f = &*FIXTURE;
    let Ok(resolved) = resolve(&raw, &f.user_home) else {
        return;
    };
    let p = resolved.as_path();
    assert!(!raw.contains('\0'), "{raw:?} has a NUL and was accepted");
    assert!(p.is_absolute(), "{raw:?} -> {p:?} is relative");
    assert!(
        p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
        "{raw:?} -> {p:?} keeps `.` or `..`"
    );
    assert!(p.as_os_str().len() <= MAX_PATH_LEN);
    let text = p.to_str().expect("resolved from UTF-8");
    let again = resolve(text, &f.user_home).expect("a resolved path resolves");
    assert_eq!(again.as_path(), p, "resolving {raw:?} again moved it");
    for action in [Action::Read, Action::Write] {
        match f.entitlements.check_path(&resolved, action) {
            Ok(allowed) if allowed.in_storage => {
                assert!(
                    p.starts_with(&f.storage),
                    "{raw:?} -> {p:?} counted as storage"
                );
            }
            Ok(_) => assert!(
                p.starts_with(&f.base),
                "{raw:?} -> {p:?} allowed to {action} outside the base"
            ),
            Err(denial) => assert!(
                !p.starts_with(&f.base),
                "{raw:?} -> {p:?} under the base was refused: {denial}"
            ),
        }
    }
});
