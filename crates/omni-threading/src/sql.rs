//! The SQL behind the stores.
//!
//! [`sql_shared`] is what both stores do alike with SQL (the timeline and
//! its outbox, the relay lease); SQLite and PostgreSQL accept the same
//! statements (`$n` parameters, `ON CONFLICT ... DO UPDATE`, partial
//! indexes), so one macro expands it for each driver. [`sql_store`] keeps
//! the threading state in tables, as the PostgreSQL store does: one
//! transaction per batch that several workers can run at once. (The
//! embedded store keeps its state in memory with a journal instead, see
//! `crate::state`; the statements here stay portable anyway, except for
//! the conversations' `tags`, a PostgreSQL array so operators can query
//! them with `ANY`.)

/// Attempts before [`crate::StoreError::Contention`]: conflicts only happen
/// while another worker writes the same customer, so a few retries settle.
pub(crate) const MAX_ATTEMPTS: u32 = 50;

/// Expands the store implementation for one driver.
///
/// `$begin` starts the write transaction (SQLite: `BEGIN IMMEDIATE`, so a
/// writer takes the file's write lock before reading; PostgreSQL:
/// `SERIALIZABLE`, so any interleaving of workers equals some serial order
/// and conflicts abort instead of corrupting). `$lock` is appended to the
/// customer read (`FOR UPDATE` on PostgreSQL, queueing workers on the same
/// customer instead of letting them fail at commit).
#[cfg(feature = "postgres")]
macro_rules! sql_store {
    ($store:ident, $db:ty, $begin:literal, $lock:literal, $retryable:path) => {
        impl $store {
            async fn thread_once(
                &self,
                config: &$crate::ThreadingConfig,
                input: &$crate::InboundEvent,
                lookups: &$crate::Lookups,
            ) -> Result<$crate::Outcome, $crate::StoreError> {
                use $crate::error::DbContext as _;
                let mut tx = self
                    .writer
                    .begin_with($begin)
                    .await
                    .ctx("beginning transaction")?;
                let outcome = Self::thread_in(&mut tx, config, input, lookups)
                    .await?
                    .map_err(|source| $crate::StoreError::Threading {
                        event_id: input.event.event_id.clone(),
                        source,
                    })?;
                match outcome {
                    $crate::Outcome::Duplicate => tx.rollback().await.ctx("rolling back")?,
                    $crate::Outcome::Threaded { .. } => tx.commit().await.ctx("committing")?,
                }
                Ok(outcome)
            }

            /// One attempt at a batch: every event in order inside one
            /// transaction, so one commit (one fsync) covers them all.
            /// The state the batch reads is fetched in a few bulk queries
            /// into an overlay that each plan updates, so later events see
            /// earlier ones; the writes go out at the end, in order (see
            /// [`crate::batch`]).
            async fn thread_batch_once(
                &self,
                config: &$crate::ThreadingConfig,
                inputs: &[$crate::InboundEvent],
            ) -> Result<Vec<Result<$crate::Outcome, $crate::ThreadingError>>, $crate::StoreError>
            {
                use $crate::error::DbContext as _;
                let lookups: Vec<Result<$crate::Lookups, $crate::ThreadingError>> =
                    inputs.iter().map($crate::lookups).collect();
                let wants = $crate::batch::Wants::of(lookups.iter().flatten());
                let mut tx = self
                    .writer
                    .begin_with($begin)
                    .await
                    .ctx("beginning transaction")?;
                let mut overlay = $crate::batch::Overlay::default();
                Self::prefetch(&mut tx, &wants, &mut overlay).await?;
                let outcomes = $crate::batch::plan_batch(config, inputs, lookups, &mut overlay);
                let writes = overlay.into_writes();
                if writes.is_empty() {
                    tx.rollback().await.ctx("rolling back")?;
                } else {
                    Self::flush(&mut tx, writes).await?;
                    tx.commit().await.ctx("committing")?;
                }
                Ok(outcomes)
            }

            /// Reads everything the batch can look at into `overlay`.
            async fn prefetch(
                tx: &mut sqlx::Transaction<'static, $db>,
                wants: &$crate::batch::Wants,
                overlay: &mut $crate::batch::Overlay,
            ) -> Result<(), $crate::StoreError> {
                use $crate::error::DbContext as _;
                use sqlx::Row as _;
                for ids in $crate::batch::key_chunks(&wants.event_ids) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "SELECT event_id, conversation_id FROM processed_events WHERE event_id IN (",
                    );
                    let mut list = q.separated(", ");
                    for id in &ids {
                        list.push_bind((*id).clone());
                    }
                    q.push(")");
                    let rows = q
                        .build()
                        .fetch_all(&mut **tx)
                        .await
                        .ctx("checking for duplicates")?;
                    for r in &rows {
                        overlay.add_processed(
                            r.try_get(0).ctx("decoding event")?,
                            r.try_get(1).ctx("decoding event")?,
                        );
                    }
                }
                for keys in $crate::batch::key_chunks(&wants.handles) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "SELECT i.kind, i.scope, i.value, COALESCE(c.merged_into, i.customer_id), \
                         i.confirmed FROM (VALUES ",
                    );
                    Self::push_keys(&mut q, &keys);
                    q.push(
                        ") w JOIN identities i ON i.kind = w.column1 AND i.scope = w.column2 \
                         AND i.value = w.column3 LEFT JOIN customers c ON c.id = i.customer_id",
                    );
                    let rows = q
                        .build()
                        .fetch_all(&mut **tx)
                        .await
                        .ctx("looking up handles")?;
                    for r in &rows {
                        let key = $crate::HandleKey {
                            kind: r.try_get(0).ctx("decoding handle")?,
                            scope: r.try_get(1).ctx("decoding handle")?,
                            value: r.try_get(2).ctx("decoding handle")?,
                        };
                        let owner = $crate::HandleOwner {
                            customer: $crate::CustomerId::from_string(
                                r.try_get(3).ctx("decoding handle")?,
                            ),
                            confirmed: r.try_get(4).ctx("decoding handle")?,
                        };
                        overlay.add_owner(key, owner);
                    }
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "SELECT s.customer_id, s.kind, s.scope, s.value FROM (VALUES ",
                    );
                    Self::push_keys(&mut q, &keys);
                    q.push(
                        ") w JOIN suggested_links s ON s.kind = w.column1 AND s.scope = w.column2 \
                         AND s.value = w.column3",
                    );
                    let rows = q
                        .build()
                        .fetch_all(&mut **tx)
                        .await
                        .ctx("reading suggestions")?;
                    for r in &rows {
                        overlay.add_suggestion(
                            $crate::CustomerId::from_string(r.try_get(0).ctx("decoding suggestion")?),
                            $crate::HandleKey {
                                kind: r.try_get(1).ctx("decoding suggestion")?,
                                scope: r.try_get(2).ctx("decoding suggestion")?,
                                value: r.try_get(3).ctx("decoding suggestion")?,
                            },
                        );
                    }
                }
                let customers = overlay.owner_customers();
                for ids in $crate::batch::key_chunks(&customers) {
                    Self::lock_customers(tx, &ids, overlay).await?;
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "SELECT id, customer_id, channel_id, thread_key, email, subject, open, \
                         last_activity_ms, tags, priority, last_acknowledgement_ms, \
                         auto_reply_templates, auto_reply_at_ms, agent_replied, awaiting \
                         FROM conversations \
                         WHERE (open OR email) AND customer_id IN (",
                    );
                    let mut list = q.separated(", ");
                    for id in &ids {
                        list.push_bind(id.as_str().to_owned());
                    }
                    q.push(")");
                    let rows = q
                        .build()
                        .fetch_all(&mut **tx)
                        .await
                        .ctx("loading conversations")?;
                    for r in &rows {
                        overlay.add_conversation(Self::conversation_row(r)?);
                    }
                }
                for ids in $crate::batch::key_chunks(&wants.message_ids) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "SELECT message_id, customer_id, conversation_id FROM message_refs \
                         WHERE message_id IN (",
                    );
                    let mut list = q.separated(", ");
                    for id in &ids {
                        list.push_bind((*id).clone());
                    }
                    q.push(")");
                    let rows = q
                        .build()
                        .fetch_all(&mut **tx)
                        .await
                        .ctx("looking up message ids")?;
                    for r in &rows {
                        overlay.add_message_ref(
                            r.try_get(0).ctx("decoding message id")?,
                            $crate::CustomerId::from_string(r.try_get(1).ctx("decoding message id")?),
                            r.try_get(2).ctx("decoding message id")?,
                        );
                    }
                }
                let missing = overlay.missing_conversations();
                for ids in $crate::batch::key_chunks(&missing) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "SELECT id, customer_id, channel_id, thread_key, email, subject, open, \
                         last_activity_ms, tags, priority, last_acknowledgement_ms, \
                         auto_reply_templates, auto_reply_at_ms, agent_replied, awaiting \
                         FROM conversations WHERE id IN (",
                    );
                    let mut list = q.separated(", ");
                    for id in &ids {
                        list.push_bind((*id).clone());
                    }
                    q.push(")");
                    let rows = q
                        .build()
                        .fetch_all(&mut **tx)
                        .await
                        .ctx("loading conversation")?;
                    for r in &rows {
                        overlay.add_conversation(Self::conversation_row(r)?);
                    }
                }
                let missing = overlay.missing_customers();
                for ids in $crate::batch::key_chunks(&missing) {
                    Self::lock_customers(tx, &ids, overlay).await?;
                }
                Ok(())
            }

            /// Reads and locks (`$lock`) the customers `ids`, in id order so
            /// that concurrent workers queue rather than deadlock.
            async fn lock_customers(
                tx: &mut sqlx::Transaction<'static, $db>,
                ids: &[&$crate::CustomerId],
                overlay: &mut $crate::batch::Overlay,
            ) -> Result<(), $crate::StoreError> {
                use $crate::error::DbContext as _;
                use sqlx::Row as _;
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "SELECT id, next_sequence, segment FROM customers WHERE id IN (",
                );
                let mut list = q.separated(", ");
                for id in ids {
                    list.push_bind(id.as_str().to_owned());
                }
                q.push(concat!(") ORDER BY id", $lock));
                let rows = q
                    .build()
                    .fetch_all(&mut **tx)
                    .await
                    .ctx("locking customers")?;
                for r in &rows {
                    let next: i64 = r.try_get(1).ctx("decoding customer")?;
                    overlay.add_customer(
                        $crate::CustomerId::from_string(r.try_get(0).ctx("decoding customer")?),
                        u64::try_from(next).unwrap_or(1),
                        r.try_get(2).ctx("decoding customer")?,
                    );
                }
                Ok(())
            }

            /// `(k, s, v), ...` rows of a `VALUES` list (the table `w`
            /// joined against the handle columns, so each row is one
            /// primary-key search).
            fn push_keys(q: &mut sqlx::QueryBuilder<$db>, keys: &[&$crate::HandleKey]) {
                for (i, key) in keys.iter().enumerate() {
                    q.push(if i == 0 { "(" } else { ", (" });
                    q.push_bind(key.kind.clone());
                    q.push(", ");
                    q.push_bind(key.scope.clone());
                    q.push(", ");
                    q.push_bind(key.value.clone());
                    q.push(")");
                }
            }

            /// Writes a batch's recorded writes in order: runs of row
            /// writes become one multi-row statement per table (rows of
            /// different tables do not interact; an upserted key keeps its
            /// last value); merges and suggestion changes run in their
            /// place, after everything before them.
            async fn flush(
                tx: &mut sqlx::Transaction<'static, $db>,
                writes: Vec<$crate::batch::Write>,
            ) -> Result<(), $crate::StoreError> {
                let mut run = $crate::batch::Run::default();
                for write in writes {
                    if write.is_barrier() {
                        Self::flush_run(tx, std::mem::take(&mut run)).await?;
                        Self::barrier(tx, write).await?;
                    } else {
                        run.push(write);
                    }
                }
                Self::flush_run(tx, run).await
            }

            async fn barrier(
                tx: &mut sqlx::Transaction<'static, $db>,
                write: $crate::batch::Write,
            ) -> Result<(), $crate::StoreError> {
                use $crate::batch::Write;
                match write {
                    Write::Merge { survivor, loser } => {
                        Self::merge(tx, survivor.as_str(), loser.as_str()).await
                    }
                    Write::DeleteSuggestion { customer, key } => {
                        Self::delete_suggestion(tx, customer.as_str(), &key).await
                    }
                    Write::InsertSuggestion { customer, key } => {
                        Self::insert_suggestion(tx, customer.as_str(), &key).await
                    }
                    Write::StoreAttachment {
                        customers,
                        message_event_id,
                        index,
                        attachment,
                    } => {
                        for customer in &customers {
                            Self::fill_attachment(
                                tx,
                                customer.as_str(),
                                &message_event_id,
                                index,
                                &attachment,
                            )
                            .await?;
                        }
                        Ok(())
                    }
                    _ => Ok(()),
                }
            }

            /// Threads one event inside `tx`: loads its snapshot, plans,
            /// writes the plan. A refusal of the logic (`Ok(Err(_))`)
            /// happens before anything is written, so `tx` stays usable.
            async fn thread_in(
                tx: &mut sqlx::Transaction<'static, $db>,
                config: &$crate::ThreadingConfig,
                input: &$crate::InboundEvent,
                lookups: &$crate::Lookups,
            ) -> Result<Result<$crate::Outcome, $crate::ThreadingError>, $crate::StoreError> {
                let snapshot = Self::load_snapshot(tx, lookups).await?;
                let plan = match $crate::logic::plan_with(config, input, lookups, &snapshot) {
                    Err(refused) => return Ok(Err(refused)),
                    Ok($crate::Decision::Duplicate) => return Ok(Ok($crate::Outcome::Duplicate)),
                    Ok($crate::Decision::Threaded(plan)) => plan,
                };
                Self::write(tx, &input.event.event_id, &plan).await?;
                let first = plan.timeline.first().map_or(0, |t| t.sequence);
                let last = plan.timeline.last().map_or(0, |t| t.sequence);
                Ok(Ok($crate::Outcome::Threaded {
                    customer_id: plan.customer,
                    conversation_id: plan.conversation_id,
                    sequences: (first, last),
                }))
            }

            async fn load_conversation(
                tx: &mut sqlx::Transaction<'static, $db>,
                id: &str,
            ) -> Result<Option<$crate::Conversation>, $crate::StoreError> {
                use $crate::error::DbContext as _;
                let row = sqlx::query(
                    "SELECT id, customer_id, channel_id, thread_key, email, subject, open, \
                     last_activity_ms, tags, priority, last_acknowledgement_ms, \
                         auto_reply_templates, auto_reply_at_ms, agent_replied, awaiting \
                         FROM conversations WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&mut **tx)
                .await
                .ctx("loading conversation")?;
                row.map(|r| Self::conversation_row(&r)).transpose()
            }

            fn conversation_row(
                r: &<$db as sqlx::Database>::Row,
            ) -> Result<$crate::Conversation, $crate::StoreError> {
                use $crate::error::DbContext as _;
                use sqlx::Row as _;
                Ok($crate::Conversation {
                    id: r.try_get(0).ctx("decoding conversation")?,
                    customer: $crate::CustomerId::from_string(
                        r.try_get(1).ctx("decoding conversation")?,
                    ),
                    channel_id: r.try_get(2).ctx("decoding conversation")?,
                    thread_key: r.try_get(3).ctx("decoding conversation")?,
                    email: r.try_get(4).ctx("decoding conversation")?,
                    subject: r.try_get(5).ctx("decoding conversation")?,
                    open: r.try_get(6).ctx("decoding conversation")?,
                    last_activity_ms: r.try_get(7).ctx("decoding conversation")?,
                    tags: r.try_get(8).ctx("decoding conversation")?,
                    priority: r
                        .try_get::<Option<String>, _>(9)
                        .ctx("decoding conversation")?
                        .map(|text| {
                            omni_rules::Priority::parse(&text)
                                .map_err(|e| sqlx::Error::Decode(e.into()))
                                .ctx("decoding conversation priority")
                        })
                        .transpose()?,
                    last_acknowledgement_ms: r.try_get(10).ctx("decoding conversation")?,
                    auto_replies: {
                        let templates: Vec<String> =
                            r.try_get(11).ctx("decoding conversation")?;
                        let times: Vec<i64> = r.try_get(12).ctx("decoding conversation")?;
                        templates
                            .into_iter()
                            .zip(times)
                            .map(|(template, at_ms)| $crate::logic::SentAutoReply { template, at_ms })
                            .collect()
                    },
                    agent_replied: r.try_get(13).ctx("decoding conversation")?,
                    awaiting: r
                        .try_get::<Option<String>, _>(14)
                        .ctx("decoding conversation")?
                        .map(|json| {
                            serde_json::from_str(&json)
                                .map_err(|e| sqlx::Error::Decode(e.into()))
                                .ctx("decoding conversation's SLA timer")
                        })
                        .transpose()?,
                })
            }

            /// A conversation's recent auto-replies as two parallel
            /// arrays (templates, times): plain `TEXT[]` and `BIGINT[]`
            /// columns, queryable without JSON.
            fn auto_reply_templates(c: &$crate::Conversation) -> Vec<String> {
                c.auto_replies.iter().map(|a| a.template.clone()).collect()
            }

            fn auto_reply_times(c: &$crate::Conversation) -> Vec<i64> {
                c.auto_replies.iter().map(|a| a.at_ms).collect()
            }

            /// A conversation's SLA timer as JSON text (it is read only
            /// with its row); `sla_timer_ms` beside it is the indexed
            /// instant the clock looks for.
            fn awaiting_json(
                c: &$crate::Conversation,
            ) -> Result<Option<String>, $crate::StoreError> {
                use $crate::error::DbContext as _;
                c.awaiting
                    .as_ref()
                    .map(|a| {
                        serde_json::to_string(a)
                            .map_err(|e| sqlx::Error::Encode(e.into()))
                            .ctx("encoding conversation's SLA timer")
                    })
                    .transpose()
            }

            async fn load_snapshot(
                tx: &mut sqlx::Transaction<'static, $db>,
                lookups: &$crate::Lookups,
            ) -> Result<$crate::Snapshot, $crate::StoreError> {
                use $crate::error::DbContext as _;
                let mut snapshot = $crate::Snapshot::default();
                let seen = sqlx::query("SELECT 1 FROM processed_events WHERE event_id = $1")
                    .bind(&lookups.event_id)
                    .fetch_optional(&mut **tx)
                    .await
                    .ctx("checking for duplicate")?;
                if seen.is_some() {
                    snapshot.already_processed = true;
                    return Ok(snapshot);
                }
                for key in &lookups.handles {
                    if let Some(owner) = Self::owner_of(tx, key).await? {
                        snapshot.owners.insert(key.clone(), owner);
                    }
                }
                let mut customers: Vec<$crate::CustomerId> =
                    snapshot.owners.values().map(|o| o.customer.clone()).collect();
                customers.sort();
                customers.dedup();
                for customer in &customers {
                    let (next, segment) = Self::lock_customer(tx, customer).await?;
                    snapshot.next_sequence.insert(customer.clone(), next);
                    if let Some(segment) = segment {
                        snapshot.segments.insert(customer.clone(), segment);
                    }
                    let rows = sqlx::query(
                        "SELECT id, customer_id, channel_id, thread_key, email, subject, open, \
                         last_activity_ms, tags, priority, last_acknowledgement_ms, \
                         auto_reply_templates, auto_reply_at_ms, agent_replied, awaiting \
                         FROM conversations \
                         WHERE customer_id = $1 \
                         AND (open OR (email AND subject = $2 AND subject <> ''))",
                    )
                    .bind(customer.as_str())
                    .bind(&lookups.subject)
                    .fetch_all(&mut **tx)
                    .await
                    .ctx("loading conversations")?;
                    for row in &rows {
                        snapshot.conversations.push(Self::conversation_row(row)?);
                    }
                    for message_id in &lookups.message_ids {
                        let conv: Option<String> = sqlx::query_scalar(
                            "SELECT conversation_id FROM message_refs \
                             WHERE customer_id = $1 AND message_id = $2",
                        )
                        .bind(customer.as_str())
                        .bind(message_id)
                        .fetch_optional(&mut **tx)
                        .await
                        .ctx("looking up message id")?;
                        if let Some(conv) = conv {
                            snapshot.message_refs.insert(message_id.clone(), conv);
                        }
                    }
                }
                let mut wanted: Vec<String> = snapshot.message_refs.values().cloned().collect();
                if let Some(edited) = &lookups.edits_event_id {
                    let conv: Option<String> = sqlx::query_scalar(
                        "SELECT conversation_id FROM processed_events WHERE event_id = $1",
                    )
                    .bind(edited)
                    .fetch_optional(&mut **tx)
                    .await
                    .ctx("looking up edited event")?;
                    if let Some(conv) = conv {
                        snapshot.edited_conversation = Some(conv.clone());
                        wanted.push(conv);
                    }
                }
                for id in wanted {
                    if !snapshot.conversations.iter().any(|c| c.id == id)
                        && let Some(conv) = Self::load_conversation(tx, &id).await?
                    {
                        snapshot.conversations.push(conv);
                    }
                }
                // An attachment update goes on the timeline of its
                // message's conversation's customer.
                let edited_customer = snapshot.edited_conversation.as_ref().and_then(|id| {
                    snapshot
                        .conversations
                        .iter()
                        .find(|c| c.id == *id)
                        .map(|c| c.customer.clone())
                });
                if let Some(customer) = edited_customer
                    && !snapshot.next_sequence.contains_key(&customer)
                {
                    let (next, _) = Self::lock_customer(tx, &customer).await?;
                    snapshot.next_sequence.insert(customer, next);
                }
                Ok(snapshot)
            }

            async fn write(
                tx: &mut sqlx::Transaction<'static, $db>,
                event_id: &str,
                plan: &$crate::Plan,
            ) -> Result<(), $crate::StoreError> {
                use $crate::error::DbContext as _;
                let survivor = plan.customer.as_str();
                if plan.create_customer {
                    sqlx::query(
                        "INSERT INTO customers (id, merged_into, next_sequence) VALUES ($1, NULL, 1)",
                    )
                    .bind(survivor)
                    .execute(&mut **tx)
                    .await
                    .ctx("creating customer")?;
                }
                for loser in &plan.merged {
                    Self::merge(tx, survivor, loser.as_str()).await?;
                }
                for (key, confirmed) in &plan.links {
                    Self::link(tx, key, survivor, *confirmed).await?;
                }
                for key in &plan.suggestions {
                    Self::insert_suggestion(tx, survivor, key).await?;
                }
                for c in &plan.conversations {
                    sqlx::query(
                        "INSERT INTO conversations (id, customer_id, channel_id, thread_key, email, \
                         subject, open, last_activity_ms, tags, priority, \
                         last_acknowledgement_ms, auto_reply_templates, auto_reply_at_ms, \
                         agent_replied, awaiting, sla_timer_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, \
                         $14, $15, $16) \
                         ON CONFLICT (id) DO UPDATE SET customer_id = excluded.customer_id, \
                         open = excluded.open, last_activity_ms = excluded.last_activity_ms, \
                         tags = excluded.tags, priority = excluded.priority, \
                         last_acknowledgement_ms = excluded.last_acknowledgement_ms, \
                         auto_reply_templates = excluded.auto_reply_templates, \
                         auto_reply_at_ms = excluded.auto_reply_at_ms, \
                         agent_replied = excluded.agent_replied, awaiting = excluded.awaiting, \
                         sla_timer_ms = excluded.sla_timer_ms",
                    )
                    .bind(&c.id)
                    .bind(c.customer.as_str())
                    .bind(&c.channel_id)
                    .bind(&c.thread_key)
                    .bind(c.email)
                    .bind(&c.subject)
                    .bind(c.open)
                    .bind(c.last_activity_ms)
                    .bind(&c.tags)
                    .bind(c.priority.map(omni_rules::Priority::as_str))
                    .bind(c.last_acknowledgement_ms)
                    .bind(Self::auto_reply_templates(c))
                    .bind(Self::auto_reply_times(c))
                    .bind(c.agent_replied)
                    .bind(Self::awaiting_json(c)?)
                    .bind(c.sla_timer_ms())
                    .execute(&mut **tx)
                    .await
                    .ctx("writing conversation")?;
                }
                if let Some(message_id) = &plan.message_id {
                    sqlx::query(
                        "INSERT INTO message_refs (message_id, customer_id, conversation_id) \
                         VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    )
                    .bind(message_id)
                    .bind(survivor)
                    .bind(&plan.conversation_id)
                    .execute(&mut **tx)
                    .await
                    .ctx("recording message id")?;
                }
                sqlx::query(
                    "INSERT INTO processed_events (event_id, customer_id, conversation_id) \
                     VALUES ($1, $2, $3)",
                )
                .bind(event_id)
                .bind(survivor)
                .bind(&plan.conversation_id)
                .execute(&mut **tx)
                .await
                .ctx("recording event")?;
                for entry in &plan.timeline {
                    Self::append_outbox(tx, entry).await?;
                    if let Some(omni_proto::v1::timeline_event::Entry::AttachmentStored(update)) =
                        &entry.entry
                        && let Some(attachment) = &update.attachment
                    {
                        Self::fill_attachment(
                            tx,
                            survivor,
                            &update.message_event_id,
                            update.attachment_index,
                            attachment,
                        )
                        .await?;
                    }
                }
                Self::set_next_sequence(tx, survivor, plan.next_sequence).await
            }

            /// Fills the timeline row of message `message_event_id` in with
            /// a stored file; the row is `customer`'s or, if the message
            /// came before a merge, a merged customer's.
            async fn fill_attachment(
                tx: &mut sqlx::Transaction<'static, $db>,
                customer: &str,
                message_event_id: &str,
                index: u32,
                attachment: &omni_proto::v1::Attachment,
            ) -> Result<(), $crate::StoreError> {
                use $crate::error::DbContext as _;
                let customers: Vec<String> = sqlx::query_scalar(
                    "SELECT id FROM customers WHERE id = $1 OR merged_into = $1",
                )
                .bind(customer)
                .fetch_all(&mut **tx)
                .await
                .ctx("reading merged customers")?;
                Self::rewrite_attachment(tx, &customers, message_event_id, index, attachment).await
            }

            /// The owner of a handle, resolved through merges.
            async fn owner_of(
                tx: &mut sqlx::Transaction<'static, $db>,
                key: &$crate::HandleKey,
            ) -> Result<Option<$crate::HandleOwner>, $crate::StoreError> {
                use $crate::error::DbContext as _;
                use sqlx::Row as _;
                let row = sqlx::query(
                    "SELECT COALESCE(c.merged_into, i.customer_id), i.confirmed \
                     FROM identities i LEFT JOIN customers c ON c.id = i.customer_id \
                     WHERE i.kind = $1 AND i.scope = $2 AND i.value = $3",
                )
                .bind(&key.kind)
                .bind(&key.scope)
                .bind(&key.value)
                .fetch_optional(&mut **tx)
                .await
                .ctx("looking up handle")?;
                row.map(|row| {
                    Ok($crate::HandleOwner {
                        customer: $crate::CustomerId::from_string(
                            row.try_get(0).ctx("decoding handle")?,
                        ),
                        confirmed: row.try_get(1).ctx("decoding handle")?,
                    })
                })
                .transpose()
            }

            /// A customer's next sequence, its row locked (PostgreSQL) for
            /// the rest of the transaction.
            async fn lock_customer(
                tx: &mut sqlx::Transaction<'static, $db>,
                customer: &$crate::CustomerId,
            ) -> Result<(u64, Option<String>), $crate::StoreError> {
                use $crate::error::DbContext as _;
                let (next, segment): (i64, Option<String>) = sqlx::query_as(concat!(
                    "SELECT next_sequence, segment FROM customers WHERE id = $1",
                    $lock
                ))
                .bind(customer.as_str())
                .fetch_one(&mut **tx)
                .await
                .ctx("locking customer")?;
                Ok((u64::try_from(next).unwrap_or(1), segment))
            }

            /// Links a handle to a customer (insert or move); a suggestion
            /// of it for that customer is then moot.
            async fn link(
                tx: &mut sqlx::Transaction<'static, $db>,
                key: &$crate::HandleKey,
                customer: &str,
                confirmed: bool,
            ) -> Result<(), $crate::StoreError> {
                use $crate::error::DbContext as _;
                sqlx::query(
                    "INSERT INTO identities (kind, scope, value, customer_id, confirmed) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kind, scope, value) \
                     DO UPDATE SET customer_id = excluded.customer_id, confirmed = excluded.confirmed",
                )
                .bind(&key.kind)
                .bind(&key.scope)
                .bind(&key.value)
                .bind(customer)
                .bind(confirmed)
                .execute(&mut **tx)
                .await
                .ctx("linking handle")?;
                Self::delete_suggestion(tx, customer, key).await
            }

            /// Appends a timeline row to the outbox.
            async fn append_outbox(
                tx: &mut sqlx::Transaction<'static, $db>,
                entry: &omni_proto::v1::TimelineEvent,
            ) -> Result<(), $crate::StoreError> {
                use $crate::error::DbContext as _;
                let now = $crate::timeline_retention::now_ms();
                sqlx::query(
                    "INSERT INTO timeline (customer_id, sequence, timeline_event_id, payload, \
                     recorded_ms) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&entry.customer_id)
                .bind(i64::try_from(entry.sequence).unwrap_or(i64::MAX))
                .bind(&entry.timeline_event_id)
                .bind(prost::Message::encode_to_vec(entry))
                .bind($crate::timeline_retention::recorded_ms(entry, now))
                .execute(&mut **tx)
                .await
                .ctx("writing outbox")?;
                Ok(())
            }

            async fn set_next_sequence(
                tx: &mut sqlx::Transaction<'static, $db>,
                customer: &str,
                next: u64,
            ) -> Result<(), $crate::StoreError> {
                use $crate::error::DbContext as _;
                sqlx::query("UPDATE customers SET next_sequence = $1 WHERE id = $2")
                    .bind(i64::try_from(next).unwrap_or(i64::MAX))
                    .bind(customer)
                    .execute(&mut **tx)
                    .await
                    .ctx("advancing sequence")?;
                Ok(())
            }

            /// Merges `loser` into `survivor`: repoints earlier losers and
            /// moves every row of the loser.
            async fn merge(
                tx: &mut sqlx::Transaction<'static, $db>,
                survivor: &str,
                loser: &str,
            ) -> Result<(), $crate::StoreError> {
                use $crate::error::DbContext as _;
                for (op, sql) in [
                    (
                        "keeping a segment",
                        "UPDATE customers SET segment = \
                         (SELECT segment FROM customers WHERE id = $2) \
                         WHERE id = $1 AND segment IS NULL",
                    ),
                    (
                        "merging customer",
                        "UPDATE customers SET merged_into = $1 WHERE id = $2 OR merged_into = $2",
                    ),
                    (
                        "moving identities",
                        "UPDATE identities SET customer_id = $1 WHERE customer_id = $2",
                    ),
                    (
                        "moving conversations",
                        "UPDATE conversations SET customer_id = $1 WHERE customer_id = $2",
                    ),
                    (
                        "moving message ids",
                        "UPDATE message_refs SET customer_id = $1 WHERE customer_id = $2",
                    ),
                    (
                        "dropping duplicate suggestions",
                        "DELETE FROM suggested_links WHERE customer_id = $2 AND EXISTS \
                         (SELECT 1 FROM suggested_links s WHERE s.customer_id = $1 \
                         AND s.kind = suggested_links.kind AND s.scope = suggested_links.scope \
                         AND s.value = suggested_links.value)",
                    ),
                    (
                        "moving suggestions",
                        "UPDATE suggested_links SET customer_id = $1 WHERE customer_id = $2",
                    ),
                ] {
                    sqlx::query(sql)
                        .bind(survivor)
                        .bind(loser)
                        .execute(&mut **tx)
                        .await
                        .ctx(op)?;
                }
                Ok(())
            }

            async fn delete_suggestion(
                tx: &mut sqlx::Transaction<'static, $db>,
                customer: &str,
                key: &$crate::HandleKey,
            ) -> Result<(), $crate::StoreError> {
                use $crate::error::DbContext as _;
                sqlx::query(
                    "DELETE FROM suggested_links WHERE customer_id = $1 AND kind = $2 \
                     AND scope = $3 AND value = $4",
                )
                .bind(customer)
                .bind(&key.kind)
                .bind(&key.scope)
                .bind(&key.value)
                .execute(&mut **tx)
                .await
                .ctx("clearing suggestion")?;
                Ok(())
            }

            async fn insert_suggestion(
                tx: &mut sqlx::Transaction<'static, $db>,
                customer: &str,
                key: &$crate::HandleKey,
            ) -> Result<(), $crate::StoreError> {
                use $crate::error::DbContext as _;
                sqlx::query(
                    "INSERT INTO suggested_links (customer_id, kind, scope, value) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(customer)
                .bind(&key.kind)
                .bind(&key.scope)
                .bind(&key.value)
                .execute(&mut **tx)
                .await
                .ctx("suggesting handle")?;
                Ok(())
            }

            /// Writes a run of row writes, one multi-row statement per
            /// table and chunk.
            async fn flush_run(
                tx: &mut sqlx::Transaction<'static, $db>,
                run: $crate::batch::Run,
            ) -> Result<(), $crate::StoreError> {
                use $crate::error::DbContext as _;
                for rows in $crate::batch::row_chunks(&run.customers) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO customers (id, merged_into, next_sequence) ",
                    );
                    q.push_values(rows, |mut b, (id, next)| {
                        b.push_bind(id.as_str().to_owned())
                            .push_bind(None::<String>)
                            .push_bind(i64::try_from(*next).unwrap_or(i64::MAX));
                    });
                    q.push(" ON CONFLICT (id) DO UPDATE SET next_sequence = excluded.next_sequence");
                    q.build()
                        .execute(&mut **tx)
                        .await
                        .ctx("writing customers")?;
                }
                for rows in $crate::batch::row_chunks(&run.identities) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO identities (kind, scope, value, customer_id, confirmed) ",
                    );
                    q.push_values(rows, |mut b, (key, (customer, confirmed))| {
                        b.push_bind(key.kind.clone())
                            .push_bind(key.scope.clone())
                            .push_bind(key.value.clone())
                            .push_bind(customer.as_str().to_owned())
                            .push_bind(*confirmed);
                    });
                    q.push(
                        " ON CONFLICT (kind, scope, value) DO UPDATE SET \
                         customer_id = excluded.customer_id, confirmed = excluded.confirmed",
                    );
                    q.build()
                        .execute(&mut **tx)
                        .await
                        .ctx("linking handles")?;
                }
                for rows in $crate::batch::row_chunks(&run.conversations) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO conversations (id, customer_id, channel_id, thread_key, email, \
                         subject, open, last_activity_ms, tags, priority, \
                         last_acknowledgement_ms, auto_reply_templates, auto_reply_at_ms, \
                         agent_replied, awaiting, sla_timer_ms) ",
                    );
                    let awaiting: Vec<Option<String>> = rows
                        .iter()
                        .map(Self::awaiting_json)
                        .collect::<Result<_, _>>()?;
                    let mut awaiting = awaiting.into_iter();
                    q.push_values(rows, |mut b, c| {
                        b.push_bind(c.id.clone())
                            .push_bind(c.customer.as_str().to_owned())
                            .push_bind(c.channel_id.clone())
                            .push_bind(c.thread_key.clone())
                            .push_bind(c.email)
                            .push_bind(c.subject.clone())
                            .push_bind(c.open)
                            .push_bind(c.last_activity_ms)
                            .push_bind(c.tags.clone())
                            .push_bind(c.priority.map(omni_rules::Priority::as_str))
                            .push_bind(c.last_acknowledgement_ms)
                            .push_bind(Self::auto_reply_templates(c))
                            .push_bind(Self::auto_reply_times(c))
                            .push_bind(c.agent_replied)
                            .push_bind(awaiting.next().flatten())
                            .push_bind(c.sla_timer_ms());
                    });
                    q.push(
                        " ON CONFLICT (id) DO UPDATE SET customer_id = excluded.customer_id, \
                         open = excluded.open, last_activity_ms = excluded.last_activity_ms, \
                         tags = excluded.tags, priority = excluded.priority, \
                         last_acknowledgement_ms = excluded.last_acknowledgement_ms, \
                         auto_reply_templates = excluded.auto_reply_templates, \
                         auto_reply_at_ms = excluded.auto_reply_at_ms, \
                         agent_replied = excluded.agent_replied, awaiting = excluded.awaiting, \
                         sla_timer_ms = excluded.sla_timer_ms",
                    );
                    q.build()
                        .execute(&mut **tx)
                        .await
                        .ctx("writing conversations")?;
                }
                for rows in $crate::batch::row_chunks(&run.message_refs) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO message_refs (message_id, customer_id, conversation_id) ",
                    );
                    q.push_values(rows, |mut b, (message_id, customer, conversation)| {
                        b.push_bind(message_id.clone())
                            .push_bind(customer.as_str().to_owned())
                            .push_bind(conversation.clone());
                    });
                    q.push(" ON CONFLICT DO NOTHING");
                    q.build()
                        .execute(&mut **tx)
                        .await
                        .ctx("recording message ids")?;
                }
                for rows in $crate::batch::row_chunks(&run.processed) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO processed_events (event_id, customer_id, conversation_id) ",
                    );
                    q.push_values(rows, |mut b, (event_id, customer, conversation)| {
                        b.push_bind(event_id.clone())
                            .push_bind(customer.as_str().to_owned())
                            .push_bind(conversation.clone());
                    });
                    q.build()
                        .execute(&mut **tx)
                        .await
                        .ctx("recording events")?;
                }
                Self::append_timeline(tx, &run.timeline).await
            }

        }

        #[async_trait::async_trait]
        impl $crate::ThreadingStore for $store {
            async fn thread(
                &self,
                config: &$crate::ThreadingConfig,
                input: &$crate::InboundEvent,
            ) -> Result<$crate::Outcome, $crate::StoreError> {
                let lookups = $crate::lookups(input).map_err(|source| {
                    $crate::StoreError::Threading {
                        event_id: input.event.event_id.clone(),
                        source,
                    }
                })?;
                $crate::sql::retrying(&input.event.event_id, $retryable, || {
                    self.thread_once(config, input, &lookups)
                })
                .await
            }

            async fn thread_batch(
                &self,
                config: &$crate::ThreadingConfig,
                inputs: &[$crate::InboundEvent],
            ) -> Result<Vec<Result<$crate::Outcome, $crate::ThreadingError>>, $crate::StoreError>
            {
                // A conflict retries the whole batch.
                let first = inputs.first().map_or("", |i| i.event.event_id.as_str());
                $crate::sql::retrying(first, $retryable, || self.thread_batch_once(config, inputs)).await
            }

            async fn pending_outbox(
                &self,
                after: i64,
                limit: u32,
            ) -> Result<Vec<$crate::OutboxRow>, $crate::StoreError> {
                self.read_outbox(after, limit).await
            }

            async fn mark_published(&self, ids: &[i64]) -> Result<(), $crate::StoreError> {
                self.set_published(ids).await
            }

            async fn timeline(
                &self,
                customer: &$crate::CustomerId,
                after: Option<i64>,
                limit: u32,
            ) -> Result<$crate::TimelinePage, $crate::StoreError> {
                use $crate::error::DbContext as _;
                let resolved = self
                    .resolve_customer(customer)
                    .await?
                    .unwrap_or_else(|| customer.clone());
                let rows = sqlx::query(
                    "SELECT id, payload FROM timeline WHERE customer_id IN \
                     (SELECT id FROM customers WHERE id = $1 OR merged_into = $1) \
                     AND id > $2 ORDER BY id LIMIT $3",
                )
                .bind(resolved.as_str())
                .bind(after.unwrap_or(0))
                .bind(i64::from(limit) + 1)
                .fetch_all(&self.pool)
                .await
                .ctx("reading timeline")?;
                Self::timeline_page(resolved, rows, limit)
            }

            async fn identity(
                &self,
                handle: &$crate::HandleKey,
            ) -> Result<Option<$crate::IdentityRecord>, $crate::StoreError> {
                use $crate::error::DbContext as _;
                let mut tx = self.pool.begin().await.ctx("beginning transaction")?;
                let owner = Self::owner_of(&mut tx, handle).await?;
                tx.rollback().await.ctx("rolling back")?;
                Ok(owner.map(|o| $crate::IdentityRecord {
                    customer_id: o.customer,
                    confirmed: o.confirmed,
                }))
            }

            async fn resolve_customer(
                &self,
                id: &$crate::CustomerId,
            ) -> Result<Option<$crate::CustomerId>, $crate::StoreError> {
                use $crate::error::DbContext as _;
                let id: Option<String> =
                    sqlx::query_scalar("SELECT COALESCE(merged_into, id) FROM customers WHERE id = $1")
                        .bind(id.as_str())
                        .fetch_optional(&self.pool)
                        .await
                        .ctx("resolving customer")?;
                Ok(id.map($crate::CustomerId::from_string))
            }

            async fn suggestions(
                &self,
                customer: &$crate::CustomerId,
            ) -> Result<Vec<$crate::HandleKey>, $crate::StoreError> {
                use $crate::error::DbContext as _;
                use sqlx::Row as _;
                let rows = sqlx::query(
                    "SELECT kind, scope, value FROM suggested_links WHERE customer_id = $1 \
                     ORDER BY kind, scope, value",
                )
                .bind(customer.as_str())
                .fetch_all(&self.pool)
                .await
                .ctx("reading suggestions")?;
                rows.iter()
                    .map(|r| {
                        Ok($crate::HandleKey {
                            kind: r.try_get(0).ctx("decoding suggestion")?,
                            scope: r.try_get(1).ctx("decoding suggestion")?,
                            value: r.try_get(2).ctx("decoding suggestion")?,
                        })
                    })
                    .collect()
            }

            async fn fire_sla_timers(
                &self,
                now_ms: i64,
                limit: u32,
            ) -> Result<Vec<omni_proto::v1::TimelineEvent>, $crate::StoreError> {
                $crate::sql::retrying("sla-timers", $retryable, || {
                    self.fire_sla_timers_once(now_ms, limit)
                })
                .await
            }

            async fn apply_command(
                &self,
                command: &omni_proto::v1::ThreadingCommand,
            ) -> Result<$crate::CommandOutcome, $crate::StoreError> {
                let refused = |source| $crate::StoreError::Command {
                    command_id: command.command_id.clone(),
                    source,
                };
                let lookups = $crate::command_lookups(command).map_err(refused)?;
                $crate::sql::retrying(&command.command_id, $retryable, || {
                    self.apply_command_once(command, &lookups)
                })
                .await?
                .map_err(refused)
            }

            async fn acquire_lease(
                &self,
                name: &str,
                holder: &str,
                now_ms: i64,
                ttl_ms: i64,
            ) -> Result<bool, $crate::StoreError> {
                self.take_lease(name, holder, now_ms, ttl_ms).await
            }

            async fn release_lease(
                &self,
                name: &str,
                holder: &str,
            ) -> Result<(), $crate::StoreError> {
                self.give_up_lease(name, holder).await
            }

            async fn prune_timeline(
                &self,
                before_ms: i64,
                batch: u32,
            ) -> Result<u64, $crate::StoreError> {
                $crate::timeline_retention::prune_postgres(&self.pool, before_ms, batch).await
            }
        }

        /// Helpdesk commands: one transaction each, row by row (commands
        /// are rare; events take the batch path).
        impl $store {
            /// The clock's SLA timers: the due conversations (locked, so
            /// two workers never fire one twice; others' skipped), their
            /// customers resolved and locked in id order, then the plan's
            /// rows.
            async fn fire_sla_timers_once(
                &self,
                now_ms: i64,
                limit: u32,
            ) -> Result<Vec<omni_proto::v1::TimelineEvent>, $crate::StoreError> {
                use $crate::error::DbContext as _;
                let mut tx = self
                    .writer
                    .begin_with($begin)
                    .await
                    .ctx("beginning transaction")?;
                let ids: Vec<String> = sqlx::query_scalar(
                    "SELECT id FROM conversations WHERE sla_timer_ms <= $1 \
                     ORDER BY sla_timer_ms, id LIMIT $2 FOR UPDATE SKIP LOCKED",
                )
                .bind(now_ms)
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await
                .ctx("looking up due SLA timers")?;
                if ids.is_empty() {
                    tx.rollback().await.ctx("rolling back")?;
                    return Ok(Vec::new());
                }
                let mut snapshot = $crate::TimerSnapshot::default();
                for id in &ids {
                    if let Some(mut conv) = Self::load_conversation(&mut tx, id).await? {
                        let survivor: Option<String> = sqlx::query_scalar(
                            "SELECT COALESCE(merged_into, id) FROM customers WHERE id = $1",
                        )
                        .bind(conv.customer.as_str())
                        .fetch_optional(&mut *tx)
                        .await
                        .ctx("resolving customer")?;
                        if let Some(survivor) = survivor {
                            conv.customer = $crate::CustomerId::from_string(survivor);
                        }
                        snapshot.conversations.push(conv);
                    }
                }
                let customers: std::collections::BTreeSet<$crate::CustomerId> = snapshot
                    .conversations
                    .iter()
                    .map(|c| c.customer.clone())
                    .collect();
                for customer in customers {
                    let (next, _) = Self::lock_customer(&mut tx, &customer).await?;
                    snapshot.next_sequence.insert(customer, next);
                }
                let plan = $crate::plan_timers(&snapshot, now_ms);
                for c in &plan.conversations {
                    sqlx::query(
                        "UPDATE conversations SET customer_id = $2, priority = $3, \
                         awaiting = $4, sla_timer_ms = $5 WHERE id = $1",
                    )
                    .bind(&c.id)
                    .bind(c.customer.as_str())
                    .bind(c.priority.map(omni_rules::Priority::as_str))
                    .bind(Self::awaiting_json(c)?)
                    .bind(c.sla_timer_ms())
                    .execute(&mut *tx)
                    .await
                    .ctx("writing conversation")?;
                }
                for entry in &plan.timeline {
                    Self::append_outbox(&mut tx, entry).await?;
                }
                for (customer, next) in &plan.next_sequences {
                    Self::set_next_sequence(&mut tx, customer.as_str(), *next).await?;
                }
                tx.commit().await.ctx("committing")?;
                Ok(plan.timeline)
            }

            async fn apply_command_once(
                &self,
                command: &omni_proto::v1::ThreadingCommand,
                lookups: &$crate::CommandLookups,
            ) -> Result<
                Result<$crate::CommandOutcome, $crate::CommandError>,
                $crate::StoreError,
            > {
                use $crate::error::DbContext as _;
                let mut tx = self
                    .writer
                    .begin_with($begin)
                    .await
                    .ctx("beginning transaction")?;
                let snapshot = Self::load_command_snapshot(&mut tx, lookups).await?;
                let plan = match $crate::plan_command(command, &snapshot) {
                    Ok($crate::CommandDecision::Apply(plan)) => plan,
                    Ok($crate::CommandDecision::Duplicate) => {
                        tx.rollback().await.ctx("rolling back")?;
                        return Ok(Ok($crate::CommandOutcome::Duplicate));
                    }
                    Err(refused) => {
                        tx.rollback().await.ctx("rolling back")?;
                        return Ok(Err(refused));
                    }
                };
                Self::write_command(&mut tx, command, &plan).await?;
                tx.commit().await.ctx("committing")?;
                Ok(Ok($crate::CommandOutcome::Applied(plan.timeline)))
            }

            async fn load_command_snapshot(
                tx: &mut sqlx::Transaction<'static, $db>,
                lookups: &$crate::CommandLookups,
            ) -> Result<$crate::CommandSnapshot, $crate::StoreError> {
                use $crate::error::DbContext as _;
                let mut snapshot = $crate::CommandSnapshot::default();
                let seen = sqlx::query("SELECT 1 FROM applied_commands WHERE command_id = $1")
                    .bind(&lookups.command_id)
                    .fetch_optional(&mut **tx)
                    .await
                    .ctx("checking for duplicate command")?;
                if seen.is_some() {
                    snapshot.already_applied = true;
                    return Ok(snapshot);
                }
                let mut named = lookups.customers.clone();
                for id in &lookups.conversations {
                    if let Some(conv) = Self::load_conversation(tx, id).await? {
                        named.push(conv.customer.clone());
                        snapshot.conversations.insert(id.clone(), conv);
                    }
                }
                for id in named {
                    let survivor: Option<String> = sqlx::query_scalar(
                        "SELECT COALESCE(merged_into, id) FROM customers WHERE id = $1",
                    )
                    .bind(id.as_str())
                    .fetch_optional(&mut **tx)
                    .await
                    .ctx("resolving customer")?;
                    if let Some(survivor) = survivor {
                        snapshot
                            .resolved
                            .insert(id, $crate::CustomerId::from_string(survivor));
                    }
                }
                for conv in snapshot.conversations.values_mut() {
                    if let Some(survivor) = snapshot.resolved.get(&conv.customer) {
                        conv.customer = survivor.clone();
                    }
                }
                for key in &lookups.handles {
                    if let Some(owner) = Self::owner_of(tx, key).await? {
                        snapshot.owners.insert(key.clone(), owner);
                    }
                }
                // Lock every surviving customer involved, in id order (so
                // two commands never wait on each other crosswise).
                let survivors: std::collections::BTreeSet<$crate::CustomerId> = snapshot
                    .resolved
                    .values()
                    .cloned()
                    .chain(snapshot.owners.values().map(|o| o.customer.clone()))
                    .collect();
                for customer in survivors {
                    let (next, segment) = Self::lock_customer(tx, &customer).await?;
                    if let Some(segment) = segment {
                        snapshot.segments.insert(customer.clone(), segment);
                    }
                    snapshot.next_sequence.insert(customer, next);
                }
                Ok(snapshot)
            }

            async fn write_command(
                tx: &mut sqlx::Transaction<'static, $db>,
                command: &omni_proto::v1::ThreadingCommand,
                plan: &$crate::CommandPlan,
            ) -> Result<(), $crate::StoreError> {
                use $crate::error::DbContext as _;
                for id in &plan.create_customers {
                    sqlx::query(
                        "INSERT INTO customers (id, merged_into, next_sequence) VALUES ($1, NULL, 1)",
                    )
                    .bind(id.as_str())
                    .execute(&mut **tx)
                    .await
                    .ctx("creating customer")?;
                }
                for (survivor, loser) in &plan.merges {
                    Self::merge(tx, survivor.as_str(), loser.as_str()).await?;
                }
                for (key, customer, confirmed) in &plan.links {
                    Self::link(tx, key, customer.as_str(), *confirmed).await?;
                }
                for c in &plan.conversations {
                    sqlx::query(
                        "UPDATE conversations SET customer_id = $2, open = $3, \
                         last_activity_ms = $4, awaiting = $5, sla_timer_ms = $6 WHERE id = $1",
                    )
                    .bind(&c.id)
                    .bind(c.customer.as_str())
                    .bind(c.open)
                    .bind(c.last_activity_ms)
                    .bind(Self::awaiting_json(c)?)
                    .bind(c.sla_timer_ms())
                    .execute(&mut **tx)
                    .await
                    .ctx("writing conversation")?;
                    // A split moves the conversation's Message-IDs with it,
                    // so replies keep threading into it.
                    sqlx::query(
                        "UPDATE message_refs SET customer_id = $2 \
                         WHERE conversation_id = $1 AND customer_id <> $2",
                    )
                    .bind(&c.id)
                    .bind(c.customer.as_str())
                    .execute(&mut **tx)
                    .await
                    .ctx("moving message ids")?;
                }
                for (customer, segment) in &plan.segments {
                    sqlx::query("UPDATE customers SET segment = $2 WHERE id = $1")
                        .bind(customer.as_str())
                        .bind(segment.as_deref())
                        .execute(&mut **tx)
                        .await
                        .ctx("setting customer segment")?;
                }
                for entry in &plan.timeline {
                    Self::append_outbox(tx, entry).await?;
                }
                for (customer, next) in &plan.next_sequences {
                    Self::set_next_sequence(tx, customer.as_str(), *next).await?;
                }
                let issued_ms = $crate::logic::timestamp_ms(command.issued_at.as_ref());
                sqlx::query("INSERT INTO applied_commands (command_id, issued_at_ms) VALUES ($1, $2)")
                    .bind(&command.command_id)
                    .bind(issued_ms)
                    .execute(&mut **tx)
                    .await
                    .ctx("recording command")?;
                Ok(())
            }
        }
    };
}

pub(crate) use sql_store;

/// Expands what both stores do with SQL alike: the timeline table (the
/// outbox), its pages, and the relay lease. The threading state itself is
/// in tables only on PostgreSQL ([`sql_store`]); the embedded store keeps
/// it in memory with a journal (`crate::state`).
///
/// `$narrow_attachment_search` adds to the lookup of the timeline row an
/// attachment fills in (which has found it by event id among the
/// customers' rows) what the store's indexes need to find those rows
/// without reading the whole table.
macro_rules! sql_shared {
    ($store:ident, $db:ty, $narrow_attachment_search:path) => {
        impl $store {
            /// Appends timeline rows to the outbox in order (their ids
            /// increase with it), in multi-row statements.
            async fn append_timeline(
                tx: &mut sqlx::Transaction<'static, $db>,
                entries: &[omni_proto::v1::TimelineEvent],
            ) -> Result<(), $crate::StoreError> {
                use $crate::error::DbContext as _;
                let now = $crate::timeline_retention::now_ms();
                for chunk in $crate::batch::row_chunks(entries) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO timeline (customer_id, sequence, timeline_event_id, payload, \
                         recorded_ms) ",
                    );
                    q.push_values(chunk, |mut b, entry| {
                        b.push_bind(entry.customer_id.clone())
                            .push_bind(i64::try_from(entry.sequence).unwrap_or(i64::MAX))
                            .push_bind(entry.timeline_event_id.clone())
                            .push_bind(prost::Message::encode_to_vec(entry))
                            .push_bind($crate::timeline_retention::recorded_ms(entry, now));
                    });
                    q.build().execute(&mut **tx).await.ctx("writing outbox")?;
                }
                Ok(())
            }

            /// Pushes the query for the timeline row of message
            /// `message_event_id` among `customers`' rows, narrowed to what
            /// the store's indexes find.
            pub(crate) fn push_attachment_row_query(
                q: &mut sqlx::QueryBuilder<$db>,
                customers: &[String],
                message_event_id: &str,
            ) {
                q.push("SELECT id, payload FROM timeline WHERE timeline_event_id = ");
                q.push_bind(message_event_id.to_owned());
                q.push(" AND customer_id IN (");
                let mut list = q.separated(", ");
                for customer in customers {
                    list.push_bind(customer.clone());
                }
                q.push(")");
                $narrow_attachment_search(q, customers);
            }

            /// Fills the timeline row of message `message_event_id`, among
            /// `customers`' rows, in with a stored file (see
            /// [`crate::logic::apply_stored_attachment`]); a row already
            /// filled in is not written again.
            async fn rewrite_attachment(
                tx: &mut sqlx::Transaction<'static, $db>,
                customers: &[String],
                message_event_id: &str,
                index: u32,
                attachment: &omni_proto::v1::Attachment,
            ) -> Result<(), $crate::StoreError> {
                use $crate::error::DbContext as _;
                if customers.is_empty() {
                    return Ok(());
                }
                let mut q = sqlx::QueryBuilder::<$db>::new("");
                Self::push_attachment_row_query(&mut q, customers, message_event_id);
                let rows = q
                    .build()
                    .fetch_all(&mut **tx)
                    .await
                    .ctx("reading the message's timeline row")?;
                for mut row in Self::outbox_rows(rows)? {
                    if $crate::logic::apply_stored_attachment(&mut row.event, index, attachment) {
                        sqlx::query("UPDATE timeline SET payload = $1 WHERE id = $2")
                            .bind(prost::Message::encode_to_vec(&row.event))
                            .bind(row.id)
                            .execute(&mut **tx)
                            .await
                            .ctx("storing the attachment in the message's row")?;
                    }
                }
                Ok(())
            }

            fn outbox_rows(
                rows: Vec<<$db as sqlx::Database>::Row>,
            ) -> Result<Vec<$crate::OutboxRow>, $crate::StoreError> {
                use sqlx::Row as _;
                use $crate::error::DbContext as _;
                rows.iter()
                    .map(|r| {
                        let id: i64 = r.try_get(0).ctx("decoding outbox row")?;
                        let payload: Vec<u8> = r.try_get(1).ctx("decoding outbox row")?;
                        let event = <omni_proto::v1::TimelineEvent as prost::Message>::decode(
                            payload.as_slice(),
                        )
                        .map_err(|source| $crate::StoreError::Corrupt { id, source })?;
                        Ok($crate::OutboxRow { id, event })
                    })
                    .collect()
            }

            /// A page from up to `limit + 1` rows (the extra one says
            /// whether there is a next page).
            fn timeline_page(
                customer_id: $crate::CustomerId,
                mut rows: Vec<<$db as sqlx::Database>::Row>,
                limit: u32,
            ) -> Result<$crate::TimelinePage, $crate::StoreError> {
                let more = rows.len() > limit as usize;
                rows.truncate(limit as usize);
                let entries = Self::outbox_rows(rows)?;
                let next = if more {
                    entries.last().map(|r| r.id)
                } else {
                    None
                };
                Ok($crate::TimelinePage {
                    customer_id,
                    entries,
                    next,
                })
            }

            async fn read_outbox(
                &self,
                after: i64,
                limit: u32,
            ) -> Result<Vec<$crate::OutboxRow>, $crate::StoreError> {
                use $crate::error::DbContext as _;
                let rows = sqlx::query(
                    "SELECT id, payload FROM timeline WHERE NOT published AND id > $1 \
                     ORDER BY id LIMIT $2",
                )
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
                .ctx("reading outbox")?;
                Self::outbox_rows(rows)
            }

            /// One statement per key list ([`crate::batch::key_chunks`]:
            /// a few shapes, each prepared once), on the writer: on SQLite a
            /// reader connection upgrading to write would sleep in the busy
            /// handler while the threading worker commits, for seconds under
            /// load, where the writer's queue hands it over at once.
            async fn set_published(&self, ids: &[i64]) -> Result<(), $crate::StoreError> {
                use $crate::error::DbContext as _;
                let mut tx = self.writer.begin().await.ctx("beginning transaction")?;
                for chunk in $crate::batch::key_chunks(ids) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "UPDATE timeline SET published = TRUE WHERE id IN (",
                    );
                    let mut list = q.separated(", ");
                    for id in chunk {
                        list.push_bind(*id);
                    }
                    q.push(")");
                    q.build()
                        .execute(&mut *tx)
                        .await
                        .ctx("marking outbox rows published")?;
                }
                tx.commit().await.ctx("committing")
            }

            async fn take_lease(
                &self,
                name: &str,
                holder: &str,
                now_ms: i64,
                ttl_ms: i64,
            ) -> Result<bool, $crate::StoreError> {
                use $crate::error::DbContext as _;
                let done = sqlx::query(
                    "INSERT INTO leases (name, holder, expires_at_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                     expires_at_ms = excluded.expires_at_ms \
                     WHERE leases.holder = excluded.holder OR leases.expires_at_ms < $4",
                )
                .bind(name)
                .bind(holder)
                .bind(now_ms.saturating_add(ttl_ms))
                .bind(now_ms)
                .execute(&self.writer)
                .await
                .ctx("taking the lease")?;
                Ok(done.rows_affected() == 1)
            }

            async fn give_up_lease(
                &self,
                name: &str,
                holder: &str,
            ) -> Result<(), $crate::StoreError> {
                use $crate::error::DbContext as _;
                sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
                    .bind(name)
                    .bind(holder)
                    .execute(&self.writer)
                    .await
                    .ctx("releasing the lease")?;
                Ok(())
            }
        }
    };
}

pub(crate) use sql_shared;

/// Runs one transaction `attempt` until it commits or fails for good: a
/// conflict with another worker (`retryable`) is retried from the start,
/// re-reading what the winner committed, after a short wait that grows
/// each time so two workers stop colliding in lockstep; after
/// [`MAX_ATTEMPTS`] it is [`crate::StoreError::Contention`] for `id` (the
/// event or command).
pub(crate) async fn retrying<T, F, Fut>(
    id: &str,
    retryable: fn(&crate::StoreError) -> bool,
    mut attempt: F,
) -> Result<T, crate::StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, crate::StoreError>>,
{
    let mut attempts = 0;
    loop {
        attempts += 1;
        match attempt().await {
            Err(e) if retryable(&e) && attempts < MAX_ATTEMPTS => {
                tracing::debug!(id, attempts, error = %e, "transaction conflicted, retrying");
                let ms = u64::from(attempts.min(20)) * 2;
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            Err(e) if retryable(&e) => {
                return Err(crate::StoreError::Contention {
                    event_id: id.to_owned(),
                    attempts,
                });
            }
            other => return other,
        }
    }
}

/// The database error code of a store error, if it has one.
pub(crate) fn db_code(e: &crate::StoreError) -> Option<String> {
    match e {
        crate::StoreError::Database { source, .. } => source
            .as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.into_owned()),
        _ => None,
    }
}
