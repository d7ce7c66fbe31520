//! Issue 16, part 5: the kernel's word on every nftables ruleset the tests
//! produce. [`nft_check`] runs `nft --check -f -` in a network namespace of its
//! own (`unshare --net`, gone when the command ends), so the kernel validates
//! every command, chain reference and set type without anything being
//! committed anywhere. Tests that compile or parse an nftables ruleset pass its
//! text through it; the proptest below does so for random clusters and configs.
//!
//! Without root, `nft` or `unshare` the check is skipped (said once), unless
//! `SVCNAT_REQUIRE_KERNEL=1`, which makes it a failure.

use std::process::{Command, Stdio};
use std::sync::OnceLock;

use proptest::prelude::*;
use svcnat::model::*;

/// Why `nft --check` cannot run here, if it cannot (decided once).
fn missing() -> &'static Option<String> {
    static MISSING: OnceLock<Option<String>> = OnceLock::new();
    MISSING.get_or_init(|| {
        let ok = Command::new("unshare")
            .args(["--net", "nft", "--check", "-f", "-"])
            .stdin(Stdio::null())
            .output();
        match ok {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(format!(
                "unshare --net nft --check failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Some(format!(
                "cannot run unshare/nft ({e}); apt-get install nftables, run as root"
            )),
        }
    })
}

/// Checks `dump` (`nft -f` input) with the kernel in a throwaway namespace;
/// panics with nft's error and `what` if the kernel refuses it.
pub fn nft_check(what: &str, dump: &str) {
    if let Some(why) = missing() {
        if std::env::var("SVCNAT_REQUIRE_KERNEL").as_deref() == Ok("1") {
            panic!("{what}: nft --check required (SVCNAT_REQUIRE_KERNEL=1) but {why}");
        }
        static SAID: OnceLock<()> = OnceLock::new();
        SAID.get_or_init(|| eprintln!("nft --check skipped: {why}"));
        return;
    }
    let out = crate::fixtures::run_with_stdin(
        Command::new("unshare").args(["--net", "nft", "--check", "-f", "-"]),
        dump,
    );
    assert!(
        out.status.success(),
        "{what}: nft --check refused the ruleset: {}\n{dump}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_check_refuses_a_rule_to_a_missing_chain() {
    if missing().is_some() {
        // nft_check says why (or fails under SVCNAT_REQUIRE_KERNEL=1).
        nft_check("probe", "");
        return;
    }
    let bad =
        "add table ip kube-proxy\nadd chain ip kube-proxy a\nadd rule ip kube-proxy a goto b\n";
    let refused = std::panic::catch_unwind(|| nft_check("missing chain", bad));
    assert!(
        refused.is_err(),
        "nft --check accepted a goto to a missing chain"
    );
}

proptest! {
    // Each case starts two processes: enough cases to meet every feature.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever the cluster and config, the kernel accepts the compiled table.
    #[test]
    fn every_compiled_table_passes_nft_check(
        parts in crate::properties::rich_cluster(),
        config in crate::properties::rich_config(),
        service_cidrs in any::<bool>(),
        bridge in any::<bool>(),
    ) {
        let mut config = config;
        if service_cidrs {
            config = config.with_service_cidrs([
                "172.30.0.0/16".parse().unwrap(),
                "fd00:30::/112".parse().unwrap(),
            ]);
        }
        if bridge {
            config = config.with_local_traffic(LocalTrafficDetector::BridgeInterface("cbr0".into()));
        }
        let state = crate::properties::state_of(&parts);
        if let Ok(ruleset) = svcnat::compile::nftables(&state, &config) {
            nft_check("random cluster", &ruleset.to_dump());
        }
    }
}
