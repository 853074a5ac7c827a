//! The two text formats a scraper may ask for. `prometheus-client` writes OpenMetrics, which
//! Prometheus negotiates; `curl`, `promtool check metrics` and older scrapers read the classic
//! text format 0.0.4, where a counter's HELP and TYPE name the `_total` series itself and there
//! are no `# UNIT` or `# EOF` lines.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Text,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics only when it is named, as the Go
    /// client library decides.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Rewrites OpenMetrics text (as `prometheus-client` writes it, without exemplars or
/// `_created` series) into the classic text format.
pub fn to_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // HELP precedes TYPE; whether the family is a counter is known only at its TYPE line.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, help.take(), None);
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            flush_help(&mut out, help.take(), Some(&name));
            out.push_str(&format!("# TYPE {name} {kind}\n"));
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            flush_help(&mut out, help.take(), None);
            out.push_str(line);
            out.push('\n');
        }
    }
    flush_help(&mut out, help, None);
    out
}

fn flush_help(out: &mut String, help: Option<(&str, &str)>, renamed: Option<&str>) {
    if let Some((name, text)) = help {
        out.push_str(&format!("# HELP {} {text}\n", renamed.unwrap_or(name)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_total_series() {
        let om = "# HELP tracer_closes Connection closes.\n\
                  # TYPE tracer_closes counter\n\
                  tracer_closes_total{end=\"orderly\"} 4\n\
                  # HELP tracer_program_run_seconds Run time.\n\
                  # TYPE tracer_program_run_seconds counter\n\
                  # UNIT tracer_program_run_seconds seconds\n\
                  tracer_program_run_seconds_total{program=\"a\"} 0.5\n\
                  # HELP tracer_connections Sockets by state.\n\
                  # TYPE tracer_connections gauge\n\
                  tracer_connections{state=\"LISTEN\"} 3\n\
                  # EOF\n";
        assert_eq!(
            to_text(om),
            "# HELP tracer_closes_total Connection closes.\n\
             # TYPE tracer_closes_total counter\n\
             tracer_closes_total{end=\"orderly\"} 4\n\
             # HELP tracer_program_run_seconds_total Run time.\n\
             # TYPE tracer_program_run_seconds_total counter\n\
             tracer_program_run_seconds_total{program=\"a\"} 0.5\n\
             # HELP tracer_connections Sockets by state.\n\
             # TYPE tracer_connections gauge\n\
             tracer_connections{state=\"LISTEN\"} 3\n"
        );
    }

    #[test]
    fn negotiation_follows_the_accept_header() {
        let prometheus = "application/openmetrics-text;version=1.0.0,\
                          application/openmetrics-text;version=0.0.1;q=0.75,\
                          text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text);
    }
}
