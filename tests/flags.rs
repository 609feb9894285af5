//! The README's flag table and `--help` list the same flags, in the same order, with the same
//! value names and the same defaults. Both are read here as a reader sees them, so neither can
//! drift from the other (and `--help` shows each flag's default from the row that applies it).

use auth_service::config;

/// One flag as listed: `--name VALUE` (`--name` for a switch) and its default as shown.
#[derive(Debug, PartialEq)]
struct Listed {
    flag: String,
    default: String,
}

/// The rows of the table under `## Flags`: | `--bind ADDR` | `127.0.0.1:5000` | meaning |
fn readme_flags() -> Vec<Listed> {
    let readme = include_str!("../README.md");
    let (_, section) = readme
        .split_once("\n## Flags\n")
        .expect("README.md has a \"## Flags\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter(|line| line.starts_with("| `--"))
        .map(|line| {
            let cells: Vec<&str> = line.splitn(4, '|').map(str::trim).collect();
            assert!(cells.len() == 4, "a flag row with three cells: {line}");
            Listed {
                flag: unquote(cells[1]).to_owned(),
                default: unquote(cells[2]).to_owned(),
            }
        })
        .collect()
}

/// The lines under `flags:` in `--help`: `  --bind ADDR   meaning [default: 127.0.0.1:5000]`,
/// leaving out `--help` and `--version`, which have no default and no row in the table.
fn help_flags() -> Vec<Listed> {
    let help = config::help();
    let (_, section) = help
        .split_once("\nflags:\n")
        .expect("--help has a \"flags:\" list");
    section
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with("--help ") && !line.starts_with("--version "))
        .map(|line| {
            let (flag, rest) = line
                .split_once("  ")
                .unwrap_or_else(|| panic!("two spaces between a flag and its meaning: {line}"));
            let (_, default) = rest
                .strip_suffix(']')
                .and_then(|rest| rest.rsplit_once("[default: "))
                .unwrap_or_else(|| panic!("a help line ending in [default: ...]: {line}"));
            Listed {
                flag: flag.to_owned(),
                default: default.to_owned(),
            }
        })
        .collect()
}

/// `text` without the backticks the README puts around code.
fn unquote(text: &str) -> &str {
    text.strip_prefix('`')
        .and_then(|t| t.strip_suffix('`'))
        .unwrap_or(text)
}

#[test]
fn the_readme_table_and_help_list_the_same_flags_and_defaults() {
    let readme = readme_flags();
    let help = help_flags();
    assert!(
        readme.iter().any(|f| f.flag == "--bind ADDR"),
        "the README's table was read: {readme:?}"
    );
    for (n, (in_readme, in_help)) in readme.iter().zip(&help).enumerate() {
        assert_eq!(
            in_readme,
            in_help,
            "row {} of the README's flag table against --help",
            n + 1
        );
    }
    let names = |flags: &[Listed]| flags.iter().map(|f| f.flag.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&readme),
        names(&help),
        "the README's flag table against --help"
    );
}
