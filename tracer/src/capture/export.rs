//! `tracer export FILE... --format jsonl|csv`: the records of a capture for other tools. JSON
//! lines are exactly `tracer replay --json`; CSV has one fixed column per field of the JSON
//! contract, and an `extra` column holding any other fields (records of newer kinds) as JSON.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
};

use serde_json::Value;

use super::{
    replay::{Shown, print_item},
    walk::{Visit, WalkError, WalkReport, walk},
};
use crate::{
    cli::{EventType, ExportArgs, capture::ExportFormat},
    output::Format,
    stream::View,
};

/// The CSV columns, in order.
pub const CSV_COLUMNS: [&str; 25] = [
    "type",
    "time",
    "sk",
    "pid",
    "comm",
    "owner",
    "family",
    "saddr",
    "sport",
    "daddr",
    "dport",
    "old_state",
    "new_state",
    "duration_ms",
    "state",
    "err",
    "netns",
    "end",
    "error",
    "lifespan_ms",
    "bytes_sent",
    "bytes_received",
    "retransmits",
    "cause",
    "count",
];

fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// One JSON record as a CSV row.
pub fn csv_row(rec: &Value) -> Vec<String> {
    let mut row: Vec<String> = CSV_COLUMNS.iter().map(|c| cell(rec.get(*c))).collect();
    let extra: serde_json::Map<String, Value> = rec
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !CSV_COLUMNS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    row.push(if extra.is_empty() {
        String::new()
    } else {
        Value::Object(extra).to_string()
    });
    row
}

pub fn run(args: &ExportArgs) -> Result<WalkReport, WalkError> {
    let sink: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(File::create(path).map_err(|e| super::CaptureError::io(path, e))?),
        None => Box::new(io::stdout().lock()),
    };
    let mut out = BufWriter::with_capacity(1 << 16, sink);
    let filter = args.filter.to_filter();
    let view = Shown {
        view: View::of(&args.filter),
        recorded_anomalies: args.filter.wants(EventType::Anomaly),
    };
    let report = match args.format {
        ExportFormat::Jsonl => walk(&args.files, |v, report| match v {
            Visit::Item(h, item) => {
                print_item(&mut out, h, Format::Json, &filter, view, item, report)
            }
            Visit::File(_) | Visit::Gap => Ok(()),
        })?,
        ExportFormat::Csv => {
            let mut w = csv::Writer::from_writer(&mut out);
            let mut header: Vec<&str> = CSV_COLUMNS.to_vec();
            header.push("extra");
            w.write_record(&header)
                .map_err(|e| WalkError::Output(e.into()))?;
            let mut lines = Vec::new();
            let report = walk(&args.files, |v, report| {
                let Visit::Item(h, item) = v else {
                    return Ok(());
                };
                lines.clear();
                print_item(&mut lines, h, Format::Json, &filter, view, item, report)?;
                for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    let rec: Value = serde_json::from_slice(line).map_err(io::Error::other)?;
                    w.write_record(csv_row(&rec)).map_err(io::Error::other)?;
                }
                Ok(())
            })?;
            w.flush().map_err(WalkError::Output)?;
            report
        }
    };
    out.flush().map_err(WalkError::Output)?;
    eprintln!("{}", report.summary());
    report.check(args.strict)?;
    Ok(report)
}
