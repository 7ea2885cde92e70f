//! `omnid tail`: print a topic's records as JSON lines, decoding the
//! protobuf payload by its CloudEvents type, so people can see what
//! consumers will see.

use std::{io::Write, path::Path, time::Duration};

use clap::Args;
use omni_log::StoredRecord;
use omni_model::cloudevents;
use omni_proto::{Message, v1};
use serde_json::{Value, json};

use crate::settings::{Settings, Topics};

#[derive(Debug, Args)]
pub struct TailArgs {
    /// `inbound`, `timeline`, `outbound`, `deadletter`, `commands`, or a full
    /// topic name.
    #[arg(long, short, default_value = "inbound")]
    topic: String,
    /// First offset to print.
    #[arg(long, default_value_t = 0, conflicts_with = "last")]
    offset: i64,
    /// Start this many records before the end instead.
    #[arg(long)]
    last: Option<i64>,
    /// Keep waiting for new records.
    #[arg(long, short)]
    follow: bool,
}

pub(crate) async fn tail(config: &Path, args: TailArgs) -> anyhow::Result<std::process::ExitCode> {
    let settings = Settings::load(config)?;
    let log = crate::event_log::open_log(&settings, crate::event_log::LogUse::Reader).await?;
    let topic = Topics::new(&settings.log.topic_prefix).resolve(&args.topic);
    // Partition by partition: Kafka topics have several, and order is per
    // partition (so per key).
    let partitions = log.partition_count(&topic).await?.max(1);
    let mut next = Vec::with_capacity(partitions as usize);
    for partition in 0..partitions {
        let end = log.end_offset(&topic, partition).await?;
        next.push(match args.last {
            Some(last) => (end - last).max(0),
            None => args.offset,
        });
    }
    let stdout = std::io::stdout();
    loop {
        let mut printed = 0;
        for (partition, next) in (0..partitions).zip(next.iter_mut()) {
            let records = log.read(&topic, partition, *next, 512).await?;
            printed += records.len();
            let mut out = stdout.lock();
            for record in &records {
                *next = record.position.offset + 1;
                if writeln!(out, "{}", to_json(record)).is_err() {
                    // The reader went away (`omnid tail | head`): not an error.
                    let _ = log.close().await;
                    return Ok(std::process::ExitCode::SUCCESS);
                }
            }
            let _ = out.flush();
        }
        if printed == 0 {
            if !args.follow {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    log.close().await?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// One record as JSON: position, key, headers, and the decoded value.
pub(crate) fn to_json(stored: &StoredRecord) -> Value {
    let record = &stored.record;
    let headers: serde_json::Map<String, Value> = record
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.clone(),
                Value::String(String::from_utf8_lossy(value).into_owned()),
            )
        })
        .collect();
    let ce_type = headers
        .get("ce_type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let payload = record.payload.as_ref();
    let json =
        headers.get("content-type").and_then(Value::as_str) == Some(cloudevents::CONTENT_TYPE_JSON);
    let value = if json {
        serde_json::from_slice(payload).ok()
    } else {
        match ce_type {
            cloudevents::TYPE_CONVERSATION_EVENT => decode::<v1::ConversationEvent>(payload),
            cloudevents::TYPE_DEAD_LETTER => decode::<v1::DeadLetter>(payload),
            cloudevents::TYPE_TIMELINE_EVENT => decode::<v1::TimelineEvent>(payload),
            cloudevents::TYPE_THREADING_COMMAND => decode::<v1::ThreadingCommand>(payload),
            _ => None,
        }
    };
    json!({
        "topic": record.topic,
        "partition": stored.position.partition,
        "offset": stored.position.offset,
        "timestamp_ms": record.timestamp_ms,
        "key": String::from_utf8_lossy(&record.key),
        "headers": headers,
        "value": value.unwrap_or_else(|| json!({ "undecodable_payload_bytes": payload.len() })),
    })
}

fn decode<M: Message + Default + serde::Serialize>(payload: &[u8]) -> Option<Value> {
    M::decode(payload)
        .ok()
        .and_then(|m| serde_json::to_value(m).ok())
}
