//! A plain Kafka producer, the baseline for Omnid's Kafka benchmark: the
//! same librdkafka and producer settings as `KafkaLog` (idempotent,
//! acks=all, linger 5 ms), no HTTP, no signatures, no encoding. It keeps
//! `--in-flight` records outstanding and reports acknowledged records/s.
//!
//!   cargo run --release -p omni-log --example plain-producer -- 127.0.0.1:9092 300000 400

use std::time::Instant;

use futures::{StreamExt, stream::FuturesUnordered};
use rdkafka::{
    ClientConfig,
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    producer::{FutureProducer, FutureRecord},
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let brokers = args.next().unwrap_or_else(|| "127.0.0.1:9092".into());
    let messages: usize = args.next().map_or(Ok(300_000), |n| n.parse())?;
    let size: usize = args.next().map_or(Ok(400), |n| n.parse())?;
    let in_flight: usize = args.next().map_or(Ok(10_000), |n| n.parse())?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "100000")
        .create()?;
    // Same partition count as the daemon's topics in the benchmark.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()?;
    let topic = NewTopic::new("bench.plain.v1", 6, TopicReplication::Fixed(1));
    let _ = admin.create_topics(&[topic], &AdminOptions::new()).await?;
    let payload = vec![b'x'; size];
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut acknowledged = 0usize;
    for i in 0..messages {
        let key = format!("customer-{}", i % 1000);
        let record = FutureRecord::to("bench.plain.v1")
            .key(&key)
            .payload(&payload);
        match producer.send_result(record) {
            Ok(delivery) => pending.push(delivery),
            Err((error, _)) => return Err(error.into()),
        }
        while pending.len() >= in_flight {
            if let Some(Ok(Ok(_))) = pending.next().await {
                acknowledged += 1;
            }
        }
    }
    while let Some(result) = pending.next().await {
        if let Ok(Ok(_)) = result {
            acknowledged += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{{\"producer\":\"rdkafka FutureProducer\",\"messages\":{messages},\"acknowledged\":{acknowledged},\"seconds\":{seconds:.2},\"acknowledged_per_s\":{:.0}}}",
        acknowledged as f64 / seconds
    );
    Ok(())
}
