//! Metric names, in one place so dashboards and docs can rely on them:
//! every crate registers its handles under these constants, never under a
//! spelled-out string.

pub const WEBHOOK_REQUESTS_TOTAL: &str = "omnid_webhook_requests_total";
pub const WEBHOOK_DURATION_SECONDS: &str = "omnid_webhook_duration_seconds";
pub const LOG_APPENDS_TOTAL: &str = "omnid_log_appends_total";
pub const LOG_APPEND_ERRORS_TOTAL: &str = "omnid_log_append_errors_total";
pub const DEAD_LETTERS_TOTAL: &str = "omnid_dead_letters_total";
pub const CONFIG_RELOADS_TOTAL: &str = "omnid_config_reloads_total";
pub const IMAP_MESSAGES_TOTAL: &str = "omnid_imap_messages_total";
pub const IMAP_SESSION_ERRORS_TOTAL: &str = "omnid_imap_session_errors_total";
pub const IMAP_CHECKPOINT_UID: &str = "omnid_imap_checkpoint_uid";
pub const TELEGRAM_UPDATES_TOTAL: &str = "omnid_telegram_updates_total";
pub const TELEGRAM_POLL_ERRORS_TOTAL: &str = "omnid_telegram_poll_errors_total";
pub const TELEGRAM_OFFSET: &str = "omnid_telegram_offset";
pub const TELEGRAM_FILES_TOTAL: &str = "omnid_telegram_files_total";
pub const OUTBOUND_DELIVERIES_TOTAL: &str = "omnid_outbound_deliveries_total";
pub const OUTBOUND_REQUESTS_TOTAL: &str = "omnid_outbound_requests_total";
pub const THREADING_EVENTS_TOTAL: &str = "omnid_threading_events_total";
pub const TIMELINE_PUBLISHED_TOTAL: &str = "omnid_timeline_published_total";
pub const THREADING_COMMANDS_TOTAL: &str = "omnid_threading_commands_total";
pub const MEDIA_DEFERRED_TOTAL: &str = "omnid_media_deferred_total";
pub const MEDIA_FETCHED_TOTAL: &str = "omnid_media_fetched_total";
pub const MEDIA_RETRIED_TOTAL: &str = "omnid_media_retried_total";
pub const MEDIA_GIVEN_UP_TOTAL: &str = "omnid_media_given_up_total";
pub const MEDIA_QUEUE_DEPTH: &str = "omnid_media_queue_depth";
pub const HTTP_REFUSALS_TOTAL: &str = "omnid_http_refusals_total";
pub const CHANNEL_UP: &str = "omnid_channel_up";
pub const CHANNEL_RESTARTS_TOTAL: &str = "omnid_channel_restarts_total";
pub const WECHAT_MESSAGES_TOTAL: &str = "omnid_wechat_messages_total";
pub const WECOM_KF_SYNCS_TOTAL: &str = "omnid_wecom_kf_syncs_total";
pub const WECOM_KF_UNREAD_AGE_SECONDS: &str = "omnid_wecom_kf_unread_age_seconds";
pub const META_UPDATES_TOTAL: &str = "omnid_meta_updates_total";
pub const CHAT_CONNECTIONS: &str = "omnid_chat_connections";
pub const CHAT_REFUSALS_TOTAL: &str = "omnid_chat_refusals_total";
pub const CHAT_MESSAGES_TOTAL: &str = "omnid_chat_messages_total";
pub const CHAT_OFFLINE_REPLIES_TOTAL: &str = "omnid_chat_offline_replies_total";
pub const LOG_TOPIC_BYTES: &str = "omnid_log_topic_bytes";
pub const LOG_TOPIC_RECORDS: &str = "omnid_log_topic_records";
pub const LOG_RETENTION_REMOVED_RECORDS_TOTAL: &str = "omnid_log_retention_removed_records_total";
pub const LOG_RETENTION_HELD_BACK_RECORDS: &str = "omnid_log_retention_held_back_records";
pub const LOG_RETENTION_FAILURES_TOTAL: &str = "omnid_log_retention_failures_total";
pub const ATTACHMENTS_FILES: &str = "omnid_attachments_files";
pub const ATTACHMENTS_BYTES: &str = "omnid_attachments_bytes";
pub const ATTACHMENTS_REMOVED_FILES_TOTAL: &str = "omnid_attachments_removed_files_total";
pub const ATTACHMENTS_REMOVED_BYTES_TOTAL: &str = "omnid_attachments_removed_bytes_total";
pub const ATTACHMENTS_GC_FAILURES_TOTAL: &str = "omnid_attachments_gc_failures_total";
pub const STATE_SEEN_PRUNED_TOTAL: &str = "omnid_state_seen_pruned_total";
pub const STATE_SEEN_MARKS: &str = "omnid_state_seen_marks";
pub const THREADING_STATE_ROWS: &str = "omnid_threading_state_rows";
pub const THREADING_DEDUPE_EVENT_IDS: &str = "omnid_threading_dedupe_event_ids";
pub const THREADING_JOURNAL_ROWS: &str = "omnid_threading_journal_rows";
pub const THREADING_CACHED_CUSTOMER_GROUPS: &str = "omnid_threading_cached_customer_groups";
pub const THREADING_CACHED_STATE_BYTES: &str = "omnid_threading_cached_state_bytes";
pub const THREADING_TIMELINE_PRUNED_TOTAL: &str = "omnid_threading_timeline_pruned_total";
pub const AUTOMATED_REPLIES_TOTAL: &str = "omnid_automated_replies_total";
pub const SLA_RESPONSE_SECONDS: &str = "omnid_sla_response_seconds";
pub const SLA_ESCALATIONS_TOTAL: &str = "omnid_sla_escalations_total";
pub const SLA_BREACHES_TOTAL: &str = "omnid_sla_breaches_total";

/// Every name above, so tests can check that dashboards, alert rules and
/// docs only refer to metrics the daemon exports. A test parses this file
/// to keep the list complete.
pub const ALL: &[&str] = &[
    WEBHOOK_REQUESTS_TOTAL,
    WEBHOOK_DURATION_SECONDS,
    LOG_APPENDS_TOTAL,
    LOG_APPEND_ERRORS_TOTAL,
    DEAD_LETTERS_TOTAL,
    CONFIG_RELOADS_TOTAL,
    IMAP_MESSAGES_TOTAL,
    IMAP_SESSION_ERRORS_TOTAL,
    IMAP_CHECKPOINT_UID,
    TELEGRAM_UPDATES_TOTAL,
    TELEGRAM_POLL_ERRORS_TOTAL,
    TELEGRAM_OFFSET,
    TELEGRAM_FILES_TOTAL,
    OUTBOUND_DELIVERIES_TOTAL,
    OUTBOUND_REQUESTS_TOTAL,
    THREADING_EVENTS_TOTAL,
    TIMELINE_PUBLISHED_TOTAL,
    THREADING_COMMANDS_TOTAL,
    MEDIA_DEFERRED_TOTAL,
    MEDIA_FETCHED_TOTAL,
    MEDIA_RETRIED_TOTAL,
    MEDIA_GIVEN_UP_TOTAL,
    MEDIA_QUEUE_DEPTH,
    HTTP_REFUSALS_TOTAL,
    CHANNEL_UP,
    CHANNEL_RESTARTS_TOTAL,
    WECHAT_MESSAGES_TOTAL,
    WECOM_KF_SYNCS_TOTAL,
    WECOM_KF_UNREAD_AGE_SECONDS,
    META_UPDATES_TOTAL,
    CHAT_CONNECTIONS,
    CHAT_REFUSALS_TOTAL,
    CHAT_MESSAGES_TOTAL,
    CHAT_OFFLINE_REPLIES_TOTAL,
    LOG_TOPIC_BYTES,
    LOG_TOPIC_RECORDS,
    LOG_RETENTION_REMOVED_RECORDS_TOTAL,
    LOG_RETENTION_HELD_BACK_RECORDS,
    LOG_RETENTION_FAILURES_TOTAL,
    ATTACHMENTS_FILES,
    ATTACHMENTS_BYTES,
    ATTACHMENTS_REMOVED_FILES_TOTAL,
    ATTACHMENTS_REMOVED_BYTES_TOTAL,
    ATTACHMENTS_GC_FAILURES_TOTAL,
    STATE_SEEN_PRUNED_TOTAL,
    STATE_SEEN_MARKS,
    THREADING_STATE_ROWS,
    THREADING_DEDUPE_EVENT_IDS,
    THREADING_JOURNAL_ROWS,
    THREADING_CACHED_CUSTOMER_GROUPS,
    THREADING_CACHED_STATE_BYTES,
    THREADING_TIMELINE_PRUNED_TOTAL,
    AUTOMATED_REPLIES_TOTAL,
    SLA_RESPONSE_SECONDS,
    SLA_ESCALATIONS_TOTAL,
    SLA_BREACHES_TOTAL,
];
