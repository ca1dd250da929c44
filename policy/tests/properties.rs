//! Property tests of path resolution and path grants (proptest).
//!
//! Raw paths are built from the pieces a hostile server would try: `..`,
//! `.`, `~`, `/`, `//`, NUL, glob characters, and the names of real folders
//! and symlinks in a temporary user home (symlinks out of, into and above
//! the granted folder, a dangling one, a sibling whose name extends the
//! granted one). The properties:
//!
//! - [`resolve`] either refuses the path or returns an absolute path without
//!   `.` or `..` components, no longer than [`MAX_PATH_LEN`]; resolving that
//!   result again gives it back;
//! - with the single grant `~/base/**`, [`Entitlements::check_path`] allows
//!   a resolved path exactly when it is the base folder or under it (or in
//!   the authority's storage), whichever way the raw path got there.
//!
//! The user home's name is either plain or full of glob characters, to check
//! that the pattern's `~` is escaped. Each property runs a few hundred cases.

use std::path::{Component, Path, PathBuf};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use terminalwire_policy::path::MAX_PATH_LEN;
use terminalwire_policy::{
    Access, Action, Authority, Entitlements, Home, PathError, PathGrant, PathPattern, Policy,
    ResolvedPath, resolve,
};

/// A temporary user home with real folders and symlinks, a terminalwire home
/// beside it (not under it), and the entitlements of `~/base/**`.
struct Fixture {
    _tmp: tempfile::TempDir,
    user_home: PathBuf,
    base: PathBuf,
    storage: PathBuf,
    entitlements: Entitlements,
}

fn fixture(home_name: &str) -> Fixture {
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let root = std::fs::canonicalize(tmp.path()).expect("canonical temp folder");
    let user_home = root.join(home_name);
    let base = user_home.join("base");
    for dir in ["base/a/b", "base/*", "base/[", "other/a", "baseline"] {
        std::fs::create_dir_all(user_home.join(dir)).expect("creating the fixture");
    }
    std::fs::write(base.join("file"), "x").expect("creating the fixture");
    std::fs::write(user_home.join("other/file"), "x").expect("creating the fixture");
    #[cfg(unix)]
    {
        use std::os::unix::fs::symlink;
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
            symlink(target, user_home.join(link)).expect("creating the fixture");
        }
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
}

/// The user home names tried: plain, and one that is a glob if unescaped.
const HOME_NAMES: [&str; 2] = ["user", r"u[*]?{x,y}\!"];

/// A raw path as a server might send it.
fn raw_path() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        // The pieces of the issue.
        Just("a"),
        Just(".."),
        Just("."),
        Just("~"),
        Just("/"),
        Just("//"),
        Just("\0"),
        Just("*"),
        Just("["),
        // Real names in the fixture.
        Just("base"),
        Just("other"),
        Just("escape"),
        Just("up"),
        Just("root"),
        Just("down"),
        Just("dangling"),
        Just("link"),
        Just("into"),
        Just("file"),
        Just("baseline"),
        Just("b"),
        // The terminalwire home beside the user home, and whatever else.
        Just("tw"),
        Just("authorities"),
        Just("example.com"),
        Just("storage"),
        Just("policy.toml"),
        Just("~x"),
        Just("\\"),
    ];
    let sep = prop_oneof![6 => Just("/"), 1 => Just(""), 1 => Just("//")];
    // Often start in the granted folder, to climb out of it.
    let start = prop_oneof![2 => Just(""), 1 => Just("~/base/"), 1 => Just("base/")];
    (start, vec((piece, sep), 1..10)).prop_map(|(start, parts)| {
        let mut raw = start.to_owned();
        for (piece, sep) in parts {
            raw.push_str(piece);
            raw.push_str(sep);
        }
        raw
    })
}

/// The invariants of one resolution.
fn check_resolution(
    raw: &str,
    result: &Result<ResolvedPath, PathError>,
    user_home: &Path,
) -> Result<(), TestCaseError> {
    match result {
        Ok(resolved) => {
            let p = resolved.as_path();
            prop_assert!(p.is_absolute(), "{:?} -> {:?} is relative", raw, p);
            prop_assert!(
                p.components()
                    .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
                "{:?} -> {:?} keeps `.` or `..`",
                raw,
                p
            );
            prop_assert!(p.as_os_str().len() <= MAX_PATH_LEN);
            prop_assert!(!p.to_string_lossy().contains('\0'));
            prop_assert!(!raw.contains('\0'), "{:?} with a NUL was accepted", raw);
            // Resolving the result again changes nothing.
            let text = p.to_str().expect("built from UTF-8 pieces");
            let again = resolve(text, user_home)
                .map_err(|e| TestCaseError::fail(format!("{raw:?} -> {p:?} -> {e}")))?;
            prop_assert_eq!(again.as_path(), p);
        }
        Err(PathError::Nul { .. }) => prop_assert!(raw.contains('\0')),
        Err(PathError::OtherUserHome { .. }) => {
            prop_assert!(raw.starts_with('~') && raw != "~" && !raw.starts_with("~/"));
        }
        Err(_) => {}
    }
    Ok(())
}

/// Runs `property` over a few hundred raw paths, for each user home name.
fn for_each_raw_path(property: impl Fn(&Fixture, &str) -> Result<(), TestCaseError>) {
    for name in HOME_NAMES {
        let fixture = fixture(name);
        let mut runner = TestRunner::new(Config::with_cases(300));
        if let Err(failure) = runner.run(&raw_path(), |raw| property(&fixture, &raw)) {
            panic!("with the user home {name:?}: {failure}");
        }
    }
}

#[test]
fn resolved_paths_are_absolute_and_normal() {
    for_each_raw_path(|f, raw| {
        let result = resolve(raw, &f.user_home);
        check_resolution(raw, &result, &f.user_home)
    });
}

#[test]
fn arbitrary_strings_resolve_safely_too() {
    let f = fixture(HOME_NAMES[0]);
    let mut runner = TestRunner::new(Config::with_cases(300));
    let result = runner.run(&"(~|/|\\PC){0,3}\\PC{0,40}", |raw| {
        check_resolution(&raw, &resolve(&raw, &f.user_home), &f.user_home)
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

#[test]
fn a_base_grant_allows_exactly_the_base() {
    for_each_raw_path(|f, raw| {
        let Ok(resolved) = f.entitlements.resolve(raw) else {
            return Ok(());
        };
        let p = resolved.as_path();
        for action in [Action::Read, Action::Write] {
            match f.entitlements.check_path(&resolved, action) {
                Ok(allowed) if allowed.in_storage => prop_assert!(
                    p.starts_with(&f.storage),
                    "{:?} -> {:?} counted as storage",
                    raw,
                    p
                ),
                Ok(_) => prop_assert!(
                    p.starts_with(&f.base),
                    "{:?} -> {:?} was allowed to {} outside {:?}",
                    raw,
                    p,
                    action,
                    f.base
                ),
                // Everything under the base is granted (so the checks above
                // are not vacuous, and `~` is escaped in the pattern).
                Err(denial) => prop_assert!(
                    !p.starts_with(&f.base),
                    "{:?} -> {:?} was refused: {}",
                    raw,
                    p,
                    denial
                ),
            }
        }
        Ok(())
    });
}

#[test]
fn the_fixture_reaches_both_sides() {
    // The pieces do lead in and out of the base, through the symlinks too.
    let f = fixture(HOME_NAMES[1]);
    let e = &f.entitlements;
    let allowed = |raw: &str| {
        let resolved = e.resolve(raw).expect("resolves");
        e.check_path(&resolved, Action::Write).is_ok()
    };
    for raw in [
        "~/base",
        "~/base/a/b",
        "~/link/x",
        "base/down",
        "~/other/into/b",
        "~/base/*/[",
    ] {
        assert!(allowed(raw), "{raw:?} refused");
    }
    for raw in [
        "~/base/escape/a",
        "~/base/up",
        "~/base/root/etc",
        "~/baseline",
        "~/base/..",
    ] {
        assert!(!allowed(raw), "{raw:?} allowed");
    }
    assert!(e.resolve("~/base/dangling").is_err());
}
