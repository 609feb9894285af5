//! The report: the table printed at the end, its rows and their goals, and the machine's
//! description.

use serde_json::{json, Value};

use crate::load::LoadResult;
use crate::Options;

pub struct Row {
    name: String,
    value: String,
    p50: String,
    p99: String,
    versus: String,
    goal: Option<Goal>,
    note: String,
}

struct Goal {
    text: String,
    figure: f64,
    bound: f64,
    at_least: bool,
}

impl Goal {
    fn met(&self) -> bool {
        if self.at_least {
            self.figure >= self.bound
        } else {
            self.figure <= self.bound
        }
    }
}

impl Row {
    pub fn load(name: String, r: &LoadResult) -> Row {
        let errors = r.rps - r.ok_rps;
        Row {
            name,
            value: format!("{} /s", thousands(r.ok_rps)),
            p50: format!("{:.2}", r.p50_ms),
            p99: format!("{:.2}", r.p99_ms),
            versus: String::new(),
            goal: None,
            note: if errors > 0.0 || r.errors > 0 {
                format!("{} not 200 /s, {} I/O errors", thousands(errors), r.errors)
            } else {
                String::new()
            },
        }
    }

    pub fn figure(name: &str, value: f64, unit: &str, at_most: f64) -> Row {
        Row {
            goal: Some(Goal {
                text: format!("≤ {at_most} {unit}"),
                figure: value,
                bound: at_most,
                at_least: false,
            }),
            ..Row::value(name.into(), format!("{value:.1} {unit}"))
        }
    }

    /// A row of one figure, already written out; a goal comes with `ratio`.
    pub fn value(name: String, value: String) -> Row {
        Row {
            name,
            value,
            p50: String::new(),
            p99: String::new(),
            versus: String::new(),
            goal: None,
            note: String::new(),
        }
    }

    pub fn ratio(mut self, ratio: f64, versus: &str, bound: f64, at_least: bool) -> Row {
        self.versus = format!("{ratio:.3} {versus}");
        self.goal = Some(Goal {
            text: format!("{} {bound}", if at_least { "≥" } else { "≤" }),
            figure: ratio,
            bound,
            at_least,
        });
        self
    }

    /// A comparison with no goal attached.
    pub fn versus(mut self, ratio: f64, versus: &str) -> Row {
        self.versus = format!("{ratio:.3} {versus}");
        self
    }

    pub fn goal_p99(mut self, at_most_ms: f64) -> Row {
        self.goal = Some(Goal {
            text: format!("p99 ≤ {at_most_ms} ms"),
            figure: self.p99.parse().unwrap_or(f64::NAN),
            bound: at_most_ms,
            at_least: false,
        });
        self
    }

    pub fn note(mut self, note: String) -> Row {
        if note.is_empty() {
            return self;
        }
        if self.note.is_empty() {
            self.note = note;
        } else {
            self.note = format!("{}; {note}", self.note);
        }
        self
    }

    pub fn goal_json(&self) -> Option<Value> {
        let goal = self.goal.as_ref()?;
        Some(
            json!({ "measure": self.name, "figure": goal.figure, "goal": goal.text, "met": goal.met() }),
        )
    }
}

pub fn print_table(when: &str, machine: &str, o: &Options, rows: &[Row]) {
    println!(
        "\nauth-service benchmark, {when}, {machine}\n\
         {} connections per request load, each measured {} s after 1 s of warm-up, best of {} \
         interleaved rounds; {} workers in both servers\n",
        o.connections, o.secs, o.rounds, o.workers
    );
    let width = rows
        .iter()
        .map(|r| r.name.chars().count())
        .max()
        .unwrap_or(0);
    println!(
        "{:width$}  {:>12}  {:>7}  {:>7}  {:>22}  {:>14}",
        "measure", "value", "p50 ms", "p99 ms", "compared", "goal"
    );
    for r in rows {
        let (goal, verdict) = match &r.goal {
            Some(g) => (g.text.clone(), if g.met() { "met" } else { "NOT MET" }),
            None => (String::new(), ""),
        };
        println!(
            "{:width$}  {:>12}  {:>7}  {:>7}  {:>22}  {:>14}  {verdict}",
            r.name, r.value, r.p50, r.p99, r.versus, goal
        );
        if !r.note.is_empty() {
            println!("{:width$}    ({})", "", r.note);
        }
    }
}

/// `12,345`
pub fn thousands(n: f64) -> String {
    if n < 100.0 {
        return format!("{n:.1}");
    }
    let digits = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{cpu}, {} cores, Linux {kernel}", crate::cores())
}

pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}
