//! The `scale` example's command line, which other tools rely on: the flags, one
//! JSON object on stdout with the agreed keys, exit code 2 on bad flags.

use serde_json::Value;

use crate::fixtures::run_example;

#[test]
fn prints_one_json_object_with_the_agreed_keys() {
    let (code, stdout, stderr) = run_example(
        "scale",
        &["--services", "40", "--endpoints", "3", "--runs", "1"],
        "",
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    let n = |key: &str| {
        v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing or not a number: {v}"))
    };
    for key in [
        "full_bytes",
        "full_ns",
        "floor_ns",
        "ratio",
        "partial_one_ns",
        "partial_one_bytes",
        "partial_100_ns",
        "partial_100_bytes",
    ] {
        assert!(n(key) > 0.0, "{key} = {}", v[key]);
    }
    assert_eq!(v["services"], 40);
    assert_eq!(v["endpoints"], 3);
    // The ratio is what it says, and a one-endpoint change is a small payload.
    assert!((n("ratio") - n("full_ns") / n("floor_ns")).abs() < 1e-6 * n("ratio"));
    assert!(n("reuse_ns") > 0.0);
    assert!((n("reuse_ratio") - n("reuse_ns") / n("floor_ns")).abs() < 1e-6 * n("reuse_ratio"));
    assert!(n("partial_one_bytes") < n("full_bytes") / 10.0);
    // The bytes are those of the library's own full text for the same cluster.
    let state = svcnat::synthetic::Spec::new(40, 3).build();
    let text = svcnat::compile::compile_text(&state, &svcnat::synthetic::config()).unwrap();
    assert_eq!(n("full_bytes") as usize, text.len());
}

#[test]
fn bad_flags_exit_2_with_one_line() {
    for args in [
        &["--services", "10"][..],
        &["--services", "ten", "--endpoints", "1"],
        &["--services", "10", "--endpoints", "1", "--mix", "nodeport"],
        &["--services", "10", "--endpoints", "1", "--frobnicate"],
    ] {
        let (code, stdout, stderr) = run_example("scale", args, "");
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
}
