//! Recognizing machine-generated mail, so a helpdesk does not answer an
//! auto-reply with an auto-acknowledgement (a mail loop), does not open
//! tickets for bounces, and can file newsletters apart.

/// What kind of automatic mail a message is. Each flag is set from header
/// evidence only; `reasons` names the evidence (stable, bounded strings).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classification {
    /// An automatic reply (out of office, vacation, "we received your
    /// request"): never answer it automatically.
    pub auto_reply: bool,
    /// A delivery failure report about a message we sent.
    pub bounce: bool,
    /// A mailing list or bulk message (newsletter, notification).
    pub bulk: bool,
    /// Why, e.g. `auto_submitted`, `dsn_report`, `list_id`.
    pub reasons: Vec<&'static str>,
}

impl Classification {
    /// True if the message was sent by a machine in any of the known ways.
    pub fn is_noise(&self) -> bool {
        self.auto_reply || self.bounce || self.bulk
    }

    fn add(&mut self, reason: &'static str) {
        if !self.reasons.contains(&reason) {
            self.reasons.push(reason);
        }
    }
}

/// What classification reads from a message.
pub(crate) struct Evidence<'a> {
    /// Top-level header fields as (name, unfolded raw value).
    pub headers: &'a [(String, String)],
    /// `type/subtype` of the message, lowercased.
    pub content_type: &'a str,
    /// The `report-type` parameter of the content type, if any.
    pub report_type: Option<&'a str>,
    /// The canonical sender address.
    pub sender: &'a str,
    /// The decoded subject.
    pub subject: &'a str,
}

/// Subjects of delivery failure reports, lowercase (substring match).
const DSN_SUBJECTS: &[&str] = &[
    "undeliver",
    "delivery status notification",
    "delivery failure",
    "delivery failed",
    "delivery has failed",
    "failure notice",
    "returned mail",
    "returned to sender",
    "mail delivery failed",
    "could not be delivered",
    "delivery notification",
    "message not delivered",
    "nondeliverable",
    "non remis",
    "non distribuable",
    "unzustellbar",
    "nicht zugestellt",
    "no se puede entregar",
    "no entregado",
    "não entregue",
    "退信",
    "未能送达",
    "无法投递",
    "無法傳遞",
    "配信不能",
    "配送不能",
];

pub(crate) fn classify(evidence: &Evidence<'_>) -> Classification {
    let mut c = Classification::default();
    let header = |name: &'static str| {
        evidence
            .headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    };

    // RFC 3834: anything but `no` means the message was generated
    // automatically (`auto-replied`, `auto-generated`, `auto-notified`).
    if header("Auto-Submitted").any(|v| {
        let token = v.split([';', '(', ' ']).next().unwrap_or_default();
        !token.is_empty() && !token.eq_ignore_ascii_case("no")
    }) {
        c.auto_reply = true;
        c.add("auto_submitted");
    }
    if header("X-Autoreply").next().is_some() {
        c.auto_reply = true;
        c.add("x_autoreply");
    }
    if header("X-Autorespond").next().is_some() {
        c.auto_reply = true;
        c.add("x_autorespond");
    }
    // Exchange marks its own automatic messages so that no further
    // automatic reply is sent to them.
    if header("X-Auto-Response-Suppress").any(|v| {
        v.split(',').map(str::trim).any(|t| {
            t.eq_ignore_ascii_case("all")
                || t.eq_ignore_ascii_case("autoreply")
                || t.eq_ignore_ascii_case("oof")
        })
    }) {
        c.auto_reply = true;
        c.add("x_auto_response_suppress");
    }

    for value in header("Precedence") {
        let value = value.to_ascii_lowercase();
        match value.as_str() {
            "auto_reply" => {
                c.auto_reply = true;
                c.add("precedence_auto_reply");
            }
            "bulk" => {
                c.bulk = true;
                c.add("precedence_bulk");
            }
            "list" => {
                c.bulk = true;
                c.add("precedence_list");
            }
            "junk" => {
                c.bulk = true;
                c.add("precedence_junk");
            }
            _ => {}
        }
    }

    if evidence.content_type == "multipart/report"
        && evidence
            .report_type
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("delivery-status"))
    {
        c.bounce = true;
        c.add("dsn_report");
    }
    let local = evidence
        .sender
        .rsplit_once('@')
        .map_or(evidence.sender, |(l, _)| l);
    if local.eq_ignore_ascii_case("mailer-daemon") || local.eq_ignore_ascii_case("postmaster") {
        let subject = evidence.subject.to_lowercase();
        if DSN_SUBJECTS.iter().any(|s| subject.contains(s)) {
            c.bounce = true;
            c.add("mailer_daemon");
        }
    }

    if header("List-Id").next().is_some() {
        c.bulk = true;
        c.add("list_id");
    }
    if header("List-Unsubscribe").next().is_some() {
        c.bulk = true;
        c.add("list_unsubscribe");
    }
    // Google's feedback loop id, set by bulk senders whatever their mailer.
    if header("Feedback-ID").next().is_some() {
        c.bulk = true;
        c.add("feedback_id");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        headers: &[(&str, &str)],
        content_type: &str,
        sender: &str,
        subject: &str,
    ) -> Classification {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        classify(&Evidence {
            headers: &headers,
            content_type,
            report_type: None,
            sender,
            subject,
        })
    }

    #[test]
    fn auto_submitted_values() {
        let c = run(
            &[("Auto-Submitted", "auto-replied (vacation)")],
            "text/plain",
            "a@b.example",
            "x",
        );
        assert!(c.auto_reply && c.is_noise());
        assert_eq!(c.reasons, ["auto_submitted"]);
        let c = run(
            &[("auto-submitted", " No ")],
            "text/plain",
            "a@b.example",
            "x",
        );
        assert!(!c.is_noise());
        let c = run(
            &[("X-Auto-Response-Suppress", "DR, RN, NRN, OOF")],
            "text/plain",
            "a@b.example",
            "x",
        );
        assert!(c.auto_reply);
        let c = run(
            &[("X-Auto-Response-Suppress", "DR, RN")],
            "text/plain",
            "a@b.example",
            "x",
        );
        assert!(!c.auto_reply);
        let c = run(
            &[("Precedence", "Auto_Reply")],
            "text/plain",
            "a@b.example",
            "x",
        );
        assert_eq!(c.reasons, ["precedence_auto_reply"]);
    }

    #[test]
    fn out_of_office_subject_alone_is_not_enough() {
        let c = run(
            &[],
            "text/plain",
            "jane@example.com",
            "Out of Office: Re: Order 7781",
        );
        assert!(!c.is_noise());
    }

    #[test]
    fn mailer_daemon_needs_a_dsn_subject() {
        let c = run(
            &[],
            "text/plain",
            "mailer-daemon@mx.example",
            "Undelivered Mail Returned to Sender",
        );
        assert!(c.bounce);
        let c = run(
            &[],
            "text/plain",
            "postmaster@mx.example",
            "Question about your account",
        );
        assert!(!c.bounce);
    }

    #[test]
    fn bulk_headers() {
        let c = run(
            &[("Precedence", "bulk"), ("Feedback-ID", "1:2:3:gmail")],
            "text/html",
            "news@shop.example",
            "Sale",
        );
        assert!(c.bulk && !c.auto_reply && !c.bounce);
        assert_eq!(c.reasons, ["precedence_bulk", "feedback_id"]);
    }
}
