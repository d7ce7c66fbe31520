//! Reading flags, shared by the examples; nothing here needs the `k8s` feature, so
//! `scale` and `kernel_cost` include this file alone. [`SpecFlags`], theirs, needs
//! the `synthetic` feature they require.
//!
//! [`lexopt`] splits the command line (`--flag value` and `--flag=value`, a value
//! taken even when it starts with `-`); this file keeps the examples' contract on
//! top of it: the messages name the flag and the value as typed, `-` is an input
//! (stdin), a lone `--` is refused like any unknown flag (lexopt would read it as
//! the end of the flags), and short flags are not bundled (`-hx` is one unknown
//! flag, not `-h` then `-x`: the examples have no short flag but `-h`).

#![allow(dead_code)]

use std::ffi::OsString;

#[cfg(feature = "synthetic")]
use svcnat::synthetic::Mix;

/// One argument of the command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Arg {
    /// A flag, as typed up to any `=`: `--services`, `-h`, `-hx`, `--`. A value
    /// joined to a long flag with `=` is read next, by [`CommandLine::value`],
    /// [`CommandLine::switch`], [`CommandLine::joined`] or [`CommandLine::typed`]
    /// ([`CommandLine::has_joined`] says whether there is one).
    Flag(String),
    /// Anything else: an input, or `-` for stdin.
    Value(String),
}

/// The command line, read flag by flag.
pub struct CommandLine(lexopt::Parser);

impl CommandLine {
    /// This process's arguments.
    pub fn from_env() -> CommandLine {
        let mut parser = lexopt::Parser::from_env();
        // `-x=3` stays one argument, so that a message can show it as typed.
        parser.set_short_equals(false);
        CommandLine(parser)
    }

    /// The next argument, or `None` at the end.
    ///
    /// # Errors
    ///
    /// A value that is not UTF-8, or a value joined to a flag that the caller did
    /// not read (a bug in the caller: every flag reads or refuses its value).
    pub fn next(&mut self) -> Result<Option<Arg>, String> {
        // lexopt would take `--` as the end of the flags; the examples never did.
        if let Some(mut raw) = self.0.try_raw_args()
            && raw.peek().is_some_and(|a| a == "--")
        {
            raw.next();
            return Ok(Some(Arg::Flag("--".to_owned())));
        }
        match self.0.next() {
            Ok(None) => Ok(None),
            Ok(Some(lexopt::Arg::Long(name))) => Ok(Some(Arg::Flag(format!("--{name}")))),
            Ok(Some(lexopt::Arg::Short(c))) => {
                // The rest of the argument, so that `-hx` is one flag, as typed.
                let rest = self.0.optional_value().unwrap_or_default();
                Ok(Some(Arg::Flag(format!("-{c}{}", rest.to_string_lossy()))))
            }
            Ok(Some(lexopt::Arg::Value(v))) => utf8(v).map(|v| Some(Arg::Value(v))),
            Err(lexopt::Error::UnexpectedValue { option, value }) => {
                Err(format!("{option}: takes no value, given {value:?}"))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// The next flag of an example that takes flags only: `None` at the end. `-h`
    /// or `--help` prints `usage` and exits 0 (a value joined to it is ignored).
    ///
    /// # Errors
    ///
    /// An argument that is not a flag, and [`CommandLine::next`]'s.
    pub fn next_flag(&mut self, usage: &str) -> Result<Option<String>, String> {
        match self.next()? {
            None => Ok(None),
            Some(Arg::Value(v)) => Err(format!("unexpected argument {v:?}")),
            Some(Arg::Flag(flag)) if flag == "-h" || flag == "--help" => {
                println!("{usage}");
                std::process::exit(0)
            }
            Some(Arg::Flag(flag)) => Ok(Some(flag)),
        }
    }

    /// The value of `flag`: joined with `=`, or the next argument.
    ///
    /// # Errors
    ///
    /// `FLAG: missing value` at the end of the command line; a value that is not UTF-8.
    pub fn value(&mut self, flag: &str) -> Result<String, String> {
        match self.0.value() {
            Ok(v) => utf8(v).map_err(|e| format!("{flag}: {e}")),
            Err(_) => Err(format!("{flag}: missing value")),
        }
    }

    /// A boolean flag: `--flag` alone is true, `--flag=true|false` says which. A
    /// value is only ever joined with `=`: in `--flag false`, `false` is an input.
    ///
    /// # Errors
    ///
    /// A joined value other than `true` or `false`.
    pub fn switch(&mut self, flag: &str) -> Result<bool, String> {
        match self.joined(flag)? {
            None => Ok(true),
            Some(v) => v
                .parse()
                .map_err(|_| format!("{flag}: {v:?} is not true or false")),
        }
    }

    /// The value joined to the last flag with `=`, if any, taken.
    ///
    /// # Errors
    ///
    /// A value that is not UTF-8.
    pub fn joined(&mut self, flag: &str) -> Result<Option<String>, String> {
        self.0
            .optional_value()
            .map(|v| utf8(v).map_err(|e| format!("{flag}: {e}")))
            .transpose()
    }

    /// Whether a value is joined to the last flag with `=` (not taken).
    pub fn has_joined(&mut self) -> bool {
        // lexopt hands out the remaining raw arguments only when none is pending.
        self.0.try_raw_args().is_none()
    }

    /// `flag` as typed, with the value joined to it if any (taken): for the line
    /// that refuses it.
    pub fn typed(&mut self, flag: &str) -> String {
        match self.0.optional_value() {
            Some(v) => format!("{flag}={}", v.to_string_lossy()),
            None => flag.to_owned(),
        }
    }
}

fn utf8(v: OsString) -> Result<String, String> {
    v.into_string().map_err(|v| format!("{v:?} is not UTF-8"))
}

/// A non-negative number.
pub fn number(flag: &str, v: &str) -> Result<u64, String> {
    v.parse()
        .map_err(|_| format!("{flag}: {v:?} is not a number"))
}

/// The flags that shape a generated cluster and a measurement: `--services`,
/// `--endpoints`, `--mix cluster-ip|load-balancer`, `--seed`, `--runs`.
#[cfg(feature = "synthetic")]
#[derive(Debug, Default)]
pub struct SpecFlags {
    pub services: Option<usize>,
    pub endpoints: Option<usize>,
    pub mix: Mix,
    pub seed: Option<u64>,
    pub runs: Option<usize>,
}

#[cfg(feature = "synthetic")]
impl SpecFlags {
    /// Takes `flag` if it is one of these, with its value: `Ok(true)` when taken.
    pub fn take(&mut self, flag: &str, args: &mut CommandLine) -> Result<bool, String> {
        match flag {
            "--services" => self.services = Some(number(flag, &args.value(flag)?)? as usize),
            "--endpoints" => self.endpoints = Some(number(flag, &args.value(flag)?)? as usize),
            "--seed" => self.seed = Some(number(flag, &args.value(flag)?)?),
            "--runs" => self.runs = Some(number(flag, &args.value(flag)?)? as usize),
            "--mix" => {
                self.mix = match args.value(flag)?.as_str() {
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
