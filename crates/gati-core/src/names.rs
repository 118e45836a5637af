//! Enums named on the command line and in files. Each derives `clap::ValueEnum` (the names) and
//! serde with the same kebab-case names, so the mapping between an enum and its names is written
//! once, by the derives.

use anyhow::{anyhow, Result};
use clap::ValueEnum;

pub trait Named: ValueEnum {
    /// The name a user types and files hold.
    fn name(&self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }

    /// The value named `s`; the error lists the known names.
    fn parse(s: &str) -> Result<Self> {
        Self::from_str(s, false).map_err(|_| {
            let known: Vec<String> = Self::value_variants().iter().map(|v| v.name()).collect();
            anyhow!("unknown {} '{s}' (known: {})", Self::what(), known.join(", "))
        })
    }

    /// What a value is, for errors ("mode", "cache variant").
    fn what() -> &'static str;
}
