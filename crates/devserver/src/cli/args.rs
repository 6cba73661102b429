//! The option tables the subcommands are parsed and documented from: each
//! option is described once, in one [`Group`], and every `--help` that
//! shows the group renders that description. [`Command::parse`] reads the
//! command line with lexopt against the same tables.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Write;

use lexopt::{Arg, Parser, ValueExt};

use super::CliError;

/// One `--name [VALUE]` option.
pub struct Opt {
    pub name: &'static str,
    /// The value's placeholder in the help (`FILE`); `None` for a flag.
    pub value: Option<&'static str>,
    /// The description; each `\n` starts a continuation line.
    pub help: &'static str,
}

/// Options shown together under one heading.
pub struct Group {
    pub title: &'static str,
    pub options: &'static [Opt],
}

/// A subcommand's options and help.
pub struct Command {
    /// The first line of its `--help`, after `flo-devserver `.
    pub about: &'static str,
    /// Its synopsis in the main help, after `flo-devserver `.
    pub usage: &'static str,
    pub groups: &'static [&'static Group],
    /// Printed after the options, when there is more to say.
    pub notes: &'static str,
}

/// Room between the widest option and its description.
const GAP: usize = 2;

impl Group {
    /// The group's lines, descriptions starting at column `width`.
    pub fn render(&self, width: usize, out: &mut String) {
        let _ = writeln!(out, "{}:", self.title);
        for opt in self.options {
            let mut lines = opt.help.lines();
            let first = lines.next().unwrap_or_default();
            let _ = writeln!(out, "  {:<width$}{first}", opt.synopsis());
            for line in lines {
                let _ = writeln!(out, "  {:<width$}{line}", "");
            }
        }
    }

    /// Where the descriptions of these groups start so that all line up.
    pub fn width(groups: &[&Group]) -> usize {
        let widest = groups.iter().flat_map(|g| g.options.iter());
        widest.map(|o| o.synopsis().len()).max().unwrap_or(0) + GAP
    }
}

impl Opt {
    fn synopsis(&self) -> String {
        match self.value {
            Some(value) => format!("--{} {value}", self.name),
            None => format!("--{}", self.name),
        }
    }
}

impl Command {
    pub fn help(&self) -> String {
        let mut out = format!("flo-devserver {}\n", self.about);
        let width = Group::width(self.groups);
        for group in self.groups {
            out.push('\n');
            group.render(width, &mut out);
        }
        if !self.notes.is_empty() {
            out.push('\n');
            out.push_str(self.notes);
        }
        out
    }

    fn find(&self, name: &str) -> Option<&'static Opt> {
        let mut all = self.groups.iter().flat_map(|g| g.options.iter());
        all.find(|o| o.name == name)
    }

    /// Reads `args` (the arguments after the subcommand); `--help` prints
    /// the help and gives `None`.
    pub fn parse(&self, args: Vec<OsString>) -> Result<Option<Parsed>, CliError> {
        let mut parser = Parser::from_args(args);
        let mut out = Parsed::default();
        let mut help = false;
        while let Some(arg) = parser.next().map_err(usage)? {
            match arg {
                Arg::Long("help") | Arg::Short('h') => help = true,
                Arg::Long(name) => {
                    let Some(opt) = self.find(name) else {
                        return Err(CliError::Usage(format!("unknown option --{name}")));
                    };
                    if opt.value.is_some() {
                        let value = parser.value().map_err(usage)?;
                        out.values.insert(opt.name, value.string().map_err(usage)?);
                    } else {
                        out.flags.push(opt.name);
                    }
                }
                Arg::Short(c) => return Err(CliError::Usage(format!("unknown option -{c}"))),
                Arg::Value(v) => out.positional.push(v.string().map_err(usage)?),
            }
        }
        if help {
            print!("{}", self.help());
            return Ok(None);
        }
        Ok(Some(out))
    }
}

/// lexopt's complaint in this program's words.
fn usage(e: lexopt::Error) -> CliError {
    CliError::Usage(match e {
        lexopt::Error::MissingValue {
            option: Some(option),
        } => format!("{option} needs a value"),
        lexopt::Error::UnexpectedValue { option, .. } => format!("{option} takes no value"),
        other => other.to_string(),
    })
}

/// The options and positionals one subcommand was given.
#[derive(Debug, Default)]
pub struct Parsed {
    values: HashMap<&'static str, String>,
    flags: Vec<&'static str>,
    positional: Vec<String>,
}

impl Parsed {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.flags.contains(&name)
    }

    pub fn no_positional(&self) -> Result<(), CliError> {
        match self.positional.first() {
            Some(extra) => Err(CliError::Usage(format!("unexpected argument {extra:?}"))),
            None => Ok(()),
        }
    }

    /// The single positional execution id.
    pub fn id(&self) -> Result<&str, CliError> {
        match self.positional.as_slice() {
            [id] => Ok(id),
            [] => Err(CliError::Usage("the execution ID is missing".into())),
            [_, extra, ..] => Err(CliError::Usage(format!("unexpected argument {extra:?}"))),
        }
    }
}
