//! Reading flags, shared by the examples; nothing here needs the `k8s` feature, so
//! `scale` and `kernel_cost` include this file alone.

#![allow(dead_code)]

use svcnat::synthetic::Mix;

/// Splits `--flag=value` and `--flag value`; returns (flag, inline value).
pub fn split_flag(arg: &str) -> (&str, Option<&str>) {
    match arg.split_once('=') {
        Some((f, v)) if f.starts_with("--") => (f, Some(v)),
        _ => (arg, None),
    }
}

/// Reads the value of a flag: inline, or the next argument.
pub fn value(
    flag: &str,
    inline: Option<&str>,
    rest: &mut impl Iterator<Item = String>,
) -> Result<String, String> {
    match inline {
        Some(v) => Ok(v.to_owned()),
        None => rest.next().ok_or_else(|| format!("{flag}: missing value")),
    }
}

/// A non-negative number.
pub fn number(flag: &str, v: &str) -> Result<u64, String> {
    v.parse()
        .map_err(|_| format!("{flag}: {v:?} is not a number"))
}

/// The flags that shape a generated cluster and a measurement: `--services`,
/// `--endpoints`, `--mix cluster-ip|load-balancer`, `--seed`, `--runs`.
#[derive(Debug, Default)]
pub struct SpecFlags {
    pub services: Option<usize>,
    pub endpoints: Option<usize>,
    pub mix: Mix,
    pub seed: Option<u64>,
    pub runs: Option<usize>,
}

impl SpecFlags {
    /// Takes `flag` if it is one of these: `Ok(true)` when taken.
    pub fn take(
        &mut self,
        flag: &str,
        inline: Option<&str>,
        rest: &mut impl Iterator<Item = String>,
    ) -> Result<bool, String> {
        let mut read = || value(flag, inline, rest);
        match flag {
            "--services" => self.services = Some(number(flag, &read()?)? as usize),
            "--endpoints" => self.endpoints = Some(number(flag, &read()?)? as usize),
            "--seed" => self.seed = Some(number(flag, &read()?)?),
            "--runs" => self.runs = Some(number(flag, &read()?)? as usize),
            "--mix" => {
                self.mix = match read()?.as_str() {
                    "cluster-ip" => Mix::ClusterIp,
                    "load-balancer" => Mix::LoadBalancer,
                    other => return Err(format!("--mix: unknown mix {other:?}")),
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}
