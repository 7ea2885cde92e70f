//! What the store contract's backends share in their tests.

/// Calls `$cases! { $($before)* case, case, ... }` with the contract's cases
/// that take one fresh store, so every backend runs the same list and a
/// case added to the contract is added to each with one line here.
macro_rules! with_single_store_cases {
    ($cases:ident! { $($before:tt)* }) => {
        $cases! {
            $($before)*
            email_sms_telegram_become_one_customer,
            unverified_claim_is_only_a_suggestion,
            duplicates_are_dropped,
            outbox_publishes_in_order_exactly_once,
            marking_published_spans_statements,
            commands_close_and_reopen_conversations,
            commands_link_merge_split_unlink,
            lease_has_one_holder,
            attachment_updates_fill_in_their_message,
            activities_never_open_conversations,
        }
    };
}

pub(crate) use with_single_store_cases;
