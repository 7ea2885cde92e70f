//! The XML WeChat posts (`<xml><Name>value</Name>...</xml>`), read into
//! a flat list of fields, refusing everything WeChat never sends and that
//! only an attacker would: document type declarations (so no entity is
//! ever defined, let alone expanded), references other than the five
//! predefined entities and character references, processing
//! instructions, a second root, text outside the root, encodings other
//! than UTF-8, and bodies, nesting or field counts beyond [`XmlLimits`].

use quick_xml::{
    Reader,
    events::{BytesStart, Event},
};

/// Bounds on one body. WeChat's messages are well under a kilobyte and two
/// levels deep below the root (`ScanCodeInfo/ScanType`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlLimits {
    /// Largest body, in bytes (which also bounds every field's text).
    pub max_bytes: usize,
    /// Deepest element nesting, the root `<xml>` counting as 1.
    pub max_depth: usize,
    /// Most fields (leaf elements).
    pub max_fields: usize,
}

impl Default for XmlLimits {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024,
            // `<xml>` counts as 1; a menu event's
            // `SendPicsInfo/PicList/item/PicMd5Sum` is 5 deep.
            max_depth: 6,
            max_fields: 64,
        }
    }
}

/// The leaf elements under the root `<xml>`, in document order: the name
/// (nested names joined with `/`, as in `ScanCodeInfo/ScanType`) and the
/// text, CDATA and references decoded and joined. In an element that has
/// CDATA, white space outside the CDATA sections is layout and dropped;
/// other text is kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fields {
    fields: Vec<(String, String)>,
}

impl Fields {
    /// The text of the field `name` (a full path for nested fields).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every field, in document order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Why a body is not a WeChat XML message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("body of {len} bytes is larger than {max}")]
    TooLarge { len: usize, max: usize },
    #[error("elements nested deeper than {max}")]
    TooDeep { max: usize },
    #[error("more than {max} fields")]
    TooManyFields { max: usize },
    #[error("document type declarations are refused")]
    Doctype,
    #[error("reference `&{0};` is not a predefined entity or a valid character")]
    Entity(String),
    #[error("processing instructions are refused")]
    ProcessingInstruction,
    #[error("body is not UTF-8")]
    NotUtf8,
    #[error("root element is `{0}`, not `xml`")]
    NotWechat(String),
    #[error("field `{0}` appears twice")]
    DuplicateField(String),
    #[error("invalid XML: {0}")]
    Invalid(String),
}

impl XmlError {
    /// Every [`XmlError::code`], for telling XML failures apart from other
    /// parse errors and for registering metric labels.
    pub const CODES: &'static [&'static str] = &[
        "xml_too_large",
        "xml_too_deep",
        "xml_too_many_fields",
        "xml_doctype",
        "xml_entity",
        "xml_processing_instruction",
        "xml_not_utf8",
        "xml_not_wechat",
        "xml_duplicate_field",
        "invalid_xml",
    ];

    /// A stable snake_case code (a metric label, a dead-letter reason).
    pub fn code(&self) -> &'static str {
        match self {
            XmlError::TooLarge { .. } => "xml_too_large",
            XmlError::TooDeep { .. } => "xml_too_deep",
            XmlError::TooManyFields { .. } => "xml_too_many_fields",
            XmlError::Doctype => "xml_doctype",
            XmlError::Entity(_) => "xml_entity",
            XmlError::ProcessingInstruction => "xml_processing_instruction",
            XmlError::NotUtf8 => "xml_not_utf8",
            XmlError::NotWechat(_) => "xml_not_wechat",
            XmlError::DuplicateField(_) => "xml_duplicate_field",
            XmlError::Invalid(_) => "invalid_xml",
        }
    }
}

fn invalid(message: impl Into<String>) -> XmlError {
    XmlError::Invalid(message.into())
}

/// An element open below the root.
#[derive(Default)]
struct Open {
    name: String,
    text: String,
    /// Once a CDATA section was seen, white-space-only text around it is
    /// layout and dropped.
    has_cdata: bool,
    has_children: bool,
}

/// Where the reader is.
struct State<'l> {
    limits: &'l XmlLimits,
    /// 0 before the root, 1 inside it, more below.
    depth: usize,
    seen_root: bool,
    seen_anything: bool,
    open: Vec<Open>,
    fields: Vec<(String, String)>,
}

/// Parses a body into its fields.
pub fn parse(body: &[u8], limits: &XmlLimits) -> Result<Fields, XmlError> {
    if body.len() > limits.max_bytes {
        return Err(XmlError::TooLarge {
            len: body.len(),
            max: limits.max_bytes,
        });
    }
    let text = std::str::from_utf8(body).map_err(|_| XmlError::NotUtf8)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = Reader::from_str(text);
    let config = reader.config_mut();
    config.check_end_names = true;
    config.check_comments = true;
    config.allow_dangling_amp = false;
    config.allow_unmatched_ends = false;
    config.expand_empty_elements = false;
    let mut state = State {
        limits,
        depth: 0,
        seen_root: false,
        seen_anything: false,
        open: Vec::new(),
        fields: Vec::new(),
    };
    loop {
        let event = reader.read_event().map_err(|e| invalid(e.to_string()))?;
        if matches!(event, Event::Eof) {
            break;
        }
        state.event(event)?;
    }
    if !state.seen_root {
        return Err(invalid("no root element"));
    }
    if state.depth != 0 {
        return Err(invalid("unclosed element"));
    }
    Ok(Fields {
        fields: state.fields,
    })
}

impl State<'_> {
    fn event(&mut self, event: Event<'_>) -> Result<(), XmlError> {
        let first = !self.seen_anything;
        self.seen_anything = true;
        match event {
            Event::Decl(decl) => {
                if !first {
                    return Err(XmlError::ProcessingInstruction);
                }
                match decl.encoding() {
                    None => Ok(()),
                    Some(Ok(encoding))
                        if encoding.eq_ignore_ascii_case(b"utf-8")
                            || encoding.eq_ignore_ascii_case(b"utf8") =>
                    {
                        Ok(())
                    }
                    Some(_) => Err(XmlError::NotUtf8),
                }
            }
            Event::PI(_) => Err(XmlError::ProcessingInstruction),
            Event::DocType(_) => Err(XmlError::Doctype),
            Event::Comment(_) => Ok(()),
            Event::Start(start) => self.start(element_name(&start)?),
            Event::Empty(start) => {
                self.start(element_name(&start)?)?;
                self.end()
            }
            Event::End(_) => self.end(),
            Event::Text(text) => {
                let decoded = text.xml10_content().map_err(|e| invalid(e.to_string()))?;
                self.text(&decoded, false)
            }
            Event::CData(cdata) => {
                let decoded = cdata.xml10_content().map_err(|e| invalid(e.to_string()))?;
                self.text(&decoded, true)
            }
            Event::GeneralRef(reference) => {
                let name = reference.decode().map_err(|e| invalid(e.to_string()))?;
                let ch = resolve(&name)?;
                self.text(ch.encode_utf8(&mut [0u8; 4]), false)
            }
            Event::Eof => Ok(()),
        }
    }

    fn start(&mut self, name: &str) -> Result<(), XmlError> {
        if self.depth == 0 {
            if self.seen_root {
                return Err(invalid("more than one root element"));
            }
            if name != "xml" {
                return Err(XmlError::NotWechat(name.chars().take(64).collect()));
            }
            self.seen_root = true;
            self.depth = 1;
            return Ok(());
        }
        if self.depth >= self.limits.max_depth {
            return Err(XmlError::TooDeep {
                max: self.limits.max_depth,
            });
        }
        if let Some(parent) = self.open.last_mut() {
            if !parent.text.trim().is_empty() {
                return Err(invalid(format!(
                    "`{}` mixes text and elements",
                    parent.name
                )));
            }
            parent.has_children = true;
        }
        self.depth += 1;
        self.open.push(Open {
            name: name.to_owned(),
            ..Open::default()
        });
        Ok(())
    }

    fn end(&mut self) -> Result<(), XmlError> {
        self.depth = self.depth.saturating_sub(1);
        let Some(element) = self.open.pop() else {
            // The root closed.
            return Ok(());
        };
        if element.has_children {
            return Ok(());
        }
        let mut path = String::new();
        for parent in &self.open {
            path.push_str(&parent.name);
            path.push('/');
        }
        path.push_str(&element.name);
        // A top-level field twice is ambiguous (which `MsgId`?); nested
        // ones repeat by design (the `item`s of a menu event's
        // `SendPicsInfo/PicList`), and `get` reads the first.
        if self.open.is_empty() && self.fields.iter().any(|(n, _)| *n == path) {
            return Err(XmlError::DuplicateField(path.chars().take(128).collect()));
        }
        if self.fields.len() >= self.limits.max_fields {
            return Err(XmlError::TooManyFields {
                max: self.limits.max_fields,
            });
        }
        self.fields.push((path, element.text));
        Ok(())
    }

    /// Character data. Outside fields only white space is allowed; in a
    /// field, white space beside CDATA is layout.
    fn text(&mut self, text: &str, cdata: bool) -> Result<(), XmlError> {
        let Some(element) = self.open.last_mut() else {
            if cdata || !text.trim().is_empty() {
                return Err(invalid(if self.depth == 0 {
                    "text outside the root element"
                } else {
                    "text directly in the root element"
                }));
            }
            return Ok(());
        };
        if element.has_children {
            if cdata || !text.trim().is_empty() {
                return Err(invalid(format!(
                    "`{}` mixes text and elements",
                    element.name
                )));
            }
            return Ok(());
        }
        if cdata {
            if !element.has_cdata {
                // White space written before the first CDATA is layout.
                if element.text.trim().is_empty() {
                    element.text.clear();
                }
                element.has_cdata = true;
            }
            element.text.push_str(text);
        } else if !(element.has_cdata && text.trim().is_empty()) {
            element.text.push_str(text);
        }
        Ok(())
    }
}

/// The name of an element whose attributes (WeChat sends none) are at
/// least well formed.
fn element_name<'e>(start: &'e BytesStart<'_>) -> Result<&'e str, XmlError> {
    for attribute in start.attributes() {
        attribute.map_err(|e| invalid(e.to_string()))?;
    }
    name_of(start.name().into_inner())
}

/// An element name: WeChat's are ASCII words; anything else (a `/` that
/// would fake a nested path, a namespace trick) is refused.
fn name_of(raw: &[u8]) -> Result<&str, XmlError> {
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if !ok {
        return Err(invalid("element name is not an ASCII word"));
    }
    std::str::from_utf8(raw).map_err(|_| XmlError::NotUtf8)
}

/// The character a reference stands for: one of the five predefined
/// entities, or a character reference to a character XML allows.
fn resolve(name: &str) -> Result<char, XmlError> {
    let refused = || XmlError::Entity(name.chars().take(32).collect());
    let ch = match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ => {
            let number = name.strip_prefix('#').ok_or_else(refused)?;
            let code = match number.strip_prefix('x') {
                Some(hex) if !hex.is_empty() && hex.len() <= 8 => {
                    u32::from_str_radix(hex, 16).map_err(|_| refused())?
                }
                None if !number.is_empty() && number.len() <= 10 => {
                    number.parse::<u32>().map_err(|_| refused())?
                }
                _ => return Err(refused()),
            };
            char::from_u32(code).ok_or_else(refused)?
        }
    };
    if is_xml_char(ch) {
        Ok(ch)
    } else {
        Err(refused())
    }
}

/// XML 1.0's `Char` production.
fn is_xml_char(ch: char) -> bool {
    matches!(ch, '\t' | '\n' | '\r' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(xml: &str) -> Fields {
        parse(xml.as_bytes(), &XmlLimits::default()).unwrap()
    }

    fn error(xml: &[u8]) -> &'static str {
        parse(xml, &XmlLimits::default()).unwrap_err().code()
    }

    /// WeChat's own lists repeat nested names: a menu's photo event
    /// (`pic_sysphoto`) as documented, 5 levels deep.
    #[test]
    fn nested_lists_repeat() {
        let body = b"<xml><ToUserName><![CDATA[gh_e136c6e50636]]></ToUserName>\
<FromUserName><![CDATA[oMgHVjngRipVsoxg6TuX3vz6glDg]]></FromUserName>\
<CreateTime>1408090651</CreateTime><MsgType><![CDATA[event]]></MsgType>\
<Event><![CDATA[pic_sysphoto]]></Event><EventKey><![CDATA[6]]></EventKey>\
<SendPicsInfo><Count>2</Count><PicList><item><PicMd5Sum><![CDATA[1b5f7c23b5bf75682a53e7b6d163e185]]></PicMd5Sum></item>\
<item><PicMd5Sum><![CDATA[2c5f7c23b5bf75682a53e7b6d163e186]]></PicMd5Sum></item></PicList></SendPicsInfo></xml>";
        let fields = parse(body, &XmlLimits::default()).unwrap();
        assert_eq!(fields.get("SendPicsInfo/Count"), Some("2"));
        assert_eq!(
            fields.get("SendPicsInfo/PicList/item/PicMd5Sum"),
            Some("1b5f7c23b5bf75682a53e7b6d163e185")
        );
        assert_eq!(fields.get("Event"), Some("pic_sysphoto"));
    }

    #[test]
    fn reads_the_documented_text_message() {
        let f = fields(
            "<xml>\n  <ToUserName><![CDATA[toUser]]></ToUserName>\n  <FromUserName><![CDATA[fromUser]]></FromUserName>\n  <CreateTime>1348831860</CreateTime>\n  <MsgType><![CDATA[text]]></MsgType>\n  <Content><![CDATA[this is a test]]></Content>\n  <MsgId>1234567890123456</MsgId>\n</xml>",
        );
        assert_eq!(
            f.iter().collect::<Vec<_>>(),
            [
                ("ToUserName", "toUser"),
                ("FromUserName", "fromUser"),
                ("CreateTime", "1348831860"),
                ("MsgType", "text"),
                ("Content", "this is a test"),
                ("MsgId", "1234567890123456"),
            ]
        );
        assert_eq!(f.len(), 6);
        assert!(!f.is_empty());
        assert_eq!(f.get("Content"), Some("this is a test"));
        assert_eq!(f.get("Missing"), None);
    }

    #[test]
    fn declaration_comments_and_layout_around_cdata() {
        let f = fields(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- hi --><xml>\n<MsgType>\n   <![CDATA[video]]>\n </MsgType><Content>  <![CDATA[ two ]]> <![CDATA[parts ]]></Content><Plain> spaced  text </Plain></xml>\n",
        );
        assert_eq!(f.get("MsgType"), Some("video"));
        assert_eq!(f.get("Content"), Some(" two parts "));
        assert_eq!(f.get("Plain"), Some(" spaced  text "));
    }

    #[test]
    fn references_are_decoded() {
        let f = fields(
            "<xml><A>a &lt;b&gt; &amp; &apos;c&quot;</A><B>&#20320;&#x597D;&#x1F600;</B><C><![CDATA[&lt; stays]]></C></xml>",
        );
        assert_eq!(f.get("A"), Some("a <b> & 'c\""));
        assert_eq!(f.get("B"), Some("你好😀"));
        assert_eq!(f.get("C"), Some("&lt; stays"));
    }

    #[test]
    fn nested_fields_are_flattened() {
        let f = fields(
            "<xml><Event><![CDATA[scancode_push]]></Event><ScanCodeInfo><ScanType><![CDATA[qrcode]]></ScanType><ScanResult><![CDATA[1]]></ScanResult></ScanCodeInfo><Empty/></xml>",
        );
        assert_eq!(f.get("ScanCodeInfo/ScanType"), Some("qrcode"));
        assert_eq!(f.get("ScanCodeInfo/ScanResult"), Some("1"));
        assert_eq!(f.get("ScanCodeInfo"), None);
        assert_eq!(f.get("Empty"), Some(""));
        assert_eq!(fields("<xml/>").len(), 0);
        assert_eq!(fields("<xml></xml>").len(), 0);
    }

    #[test]
    fn hostile_constructs_are_refused() {
        let bomb = b"<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;\">]><xml><A>&lol2;</A></xml>";
        assert_eq!(error(bomb), "xml_doctype");
        assert_eq!(error(b"<xml><A>&lol;</A></xml>"), "xml_entity");
        assert_eq!(error(b"<xml><A>&#0;</A></xml>"), "xml_entity");
        assert_eq!(error(b"<xml><A>&#x1;</A></xml>"), "xml_entity");
        assert_eq!(error(b"<xml><A>&#xD800;</A></xml>"), "xml_entity");
        assert_eq!(error(b"<xml><A>&#99999999999;</A></xml>"), "xml_entity");
        assert_eq!(error(b"<xml><A>&#x;</A></xml>"), "xml_entity");
        assert_eq!(error(b"<xml><A>a & b</A></xml>"), "invalid_xml");
        assert_eq!(
            error(b"<xml><?php echo 1; ?><A>1</A></xml>"),
            "xml_processing_instruction"
        );
        assert_eq!(
            error(b"<xml><A>1</A></xml><?xml version=\"1.0\"?>"),
            "xml_processing_instruction"
        );
        assert_eq!(
            error(b"<xml><A>1</A></xml><xml><B>2</B></xml>"),
            "invalid_xml"
        );
        assert_eq!(error(b"<xml><A>1</A></xml>trailing"), "invalid_xml");
        assert_eq!(error(b"leading<xml><A>1</A></xml>"), "invalid_xml");
        assert_eq!(error(b"<xml>loose<A>1</A></xml>"), "invalid_xml");
        assert_eq!(error(b"<xml><A>text<B>1</B></A></xml>"), "invalid_xml");
        assert_eq!(error(b"<xml><A><B>1</B>text</A></xml>"), "invalid_xml");
        assert_eq!(error(b"<xml><A>\xff</A></xml>"), "xml_not_utf8");
        assert_eq!(
            error(b"<?xml version=\"1.0\" encoding=\"GBK\"?><xml><A>1</A></xml>"),
            "xml_not_utf8"
        );
        assert_eq!(error(b"<root><A>1</A></root>"), "xml_not_wechat");
        assert_eq!(error(b"<xml><A>1</A><A>2</A></xml>"), "xml_duplicate_field");
        assert_eq!(error(b"<xml><A>1</B></xml>"), "invalid_xml");
        assert_eq!(error(b"<xml><A>1</A>"), "invalid_xml");
        assert_eq!(error(b"<xml><A>1</A></xml></xml>"), "invalid_xml");
        assert_eq!(error(b""), "invalid_xml");
        assert_eq!(error(b"   "), "invalid_xml");
        assert_eq!(error(b"<xml><a:b>1</a:b></xml>"), "invalid_xml");
        assert_eq!(error(b"<xml><A b>1</A></xml>"), "invalid_xml");
        assert_eq!(error(b"<xml><A b=\"1\" b=\"2\">1</A></xml>"), "invalid_xml");
        assert_eq!(fields("<xml><A b=\"1\">1</A></xml>").get("A"), Some("1"));
    }

    #[test]
    fn codes_are_listed() {
        let all = [
            XmlError::TooLarge { len: 2, max: 1 },
            XmlError::TooDeep { max: 1 },
            XmlError::TooManyFields { max: 1 },
            XmlError::Doctype,
            XmlError::Entity("x".into()),
            XmlError::ProcessingInstruction,
            XmlError::NotUtf8,
            XmlError::NotWechat("x".into()),
            XmlError::DuplicateField("x".into()),
            XmlError::Invalid("x".into()),
        ];
        let codes: Vec<_> = all.iter().map(XmlError::code).collect();
        assert_eq!(codes, XmlError::CODES);
    }

    #[test]
    fn limits_are_enforced() {
        let limits = XmlLimits {
            max_bytes: 100,
            max_depth: 3,
            max_fields: 2,
        };
        let big = format!("<xml><A>{}</A></xml>", "x".repeat(100));
        assert_eq!(
            parse(big.as_bytes(), &limits).unwrap_err(),
            XmlError::TooLarge { len: 118, max: 100 }
        );
        assert!(parse(b"<xml><A><B>1</B></A></xml>", &limits).is_ok());
        assert_eq!(
            parse(b"<xml><A><B><C>1</C></B></A></xml>", &limits).unwrap_err(),
            XmlError::TooDeep { max: 3 }
        );
        assert_eq!(
            parse(b"<xml><A>1</A><B>2</B><C>3</C></xml>", &limits).unwrap_err(),
            XmlError::TooManyFields { max: 2 }
        );
        let huge = vec![b'<'; 10 * 1024 * 1024];
        assert_eq!(error(&huge), "xml_too_large");
    }
}
