//! Languages: BCP-47 primary subtags, and detection of a customer's
//! language from a channel's hint or the message itself.
//!
//! Detection is deliberately simple and deterministic: a channel's hint
//! wins (Telegram's `language_code`, a web page's `lang`); otherwise the
//! dominant script decides, and where a script is shared (Arabic script:
//! Persian, Arabic, Urdu; Latin script: English, Spanish, ...) letters and
//! common words that only one language uses break the tie. Anything
//! undecided is the rule set's default language.

use std::fmt;

use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfkc_quick};

/// A language as a BCP-47 primary subtag ("fa", "ar", "zh", "en", ...).
/// Only known subtags can be built, so a typo in a rule file is an error
/// and comparisons are of interned strings.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Language(&'static str);

/// ISO 639-1 codes, plus the few ISO 639-3 codes customers' software sends
/// for languages without one (Cantonese, Filipino, Central Kurdish).
/// Sorted, for binary search.
const KNOWN: &[&str] = &[
    "aa", "ab", "ae", "af", "ak", "am", "an", "ar", "as", "av", "ay", "az", "ba", "be", "bg", "bh",
    "bi", "bm", "bn", "bo", "br", "bs", "ca", "ce", "ch", "ckb", "co", "cr", "cs", "cu", "cv",
    "cy", "da", "de", "dv", "dz", "ee", "el", "en", "eo", "es", "et", "eu", "fa", "ff", "fi",
    "fil", "fj", "fo", "fr", "fy", "ga", "gd", "gl", "gn", "gu", "gv", "ha", "he", "hi", "ho",
    "hr", "ht", "hu", "hy", "hz", "ia", "id", "ie", "ig", "ii", "ik", "io", "is", "it", "iu", "ja",
    "jv", "ka", "kg", "ki", "kj", "kk", "kl", "km", "kn", "ko", "kr", "ks", "ku", "kv", "kw", "ky",
    "la", "lb", "lg", "li", "ln", "lo", "lt", "lu", "lv", "mg", "mh", "mi", "mk", "ml", "mn", "mr",
    "ms", "mt", "my", "na", "nb", "nd", "ne", "ng", "nl", "nn", "no", "nr", "nv", "ny", "oc", "oj",
    "om", "or", "os", "pa", "pi", "pl", "ps", "pt", "qu", "rm", "rn", "ro", "ru", "rw", "sa", "sc",
    "sd", "se", "sg", "si", "sk", "sl", "sm", "sn", "so", "sq", "sr", "ss", "st", "su", "sv", "sw",
    "ta", "te", "tg", "th", "ti", "tk", "tl", "tn", "to", "tr", "ts", "tt", "tw", "ty", "ug", "uk",
    "ur", "uz", "ve", "vi", "vo", "wa", "wo", "xh", "yi", "yo", "yue", "za", "zh", "zu",
];

impl Language {
    pub const ARABIC: Self = Self("ar");
    pub const CHINESE: Self = Self("zh");
    pub const ENGLISH: Self = Self("en");
    pub const PERSIAN: Self = Self("fa");

    /// The primary subtag of a language tag as channels send it ("zh-CN",
    /// "fa_IR", "pt-br", "EN"), or `None` when it names no known language
    /// ("und", "x-klingon", ""). Deprecated codes map to current ones
    /// (iw → he, in → id, ji → yi).
    pub fn parse(tag: &str) -> Option<Self> {
        let primary = tag.trim().split(['-', '_']).next()?;
        if primary.is_empty() || primary.len() > 3 || !primary.is_ascii() {
            return None;
        }
        let lower = primary.to_ascii_lowercase();
        let code = match lower.as_str() {
            "iw" => "he",
            "in" => "id",
            "ji" => "yi",
            other => other,
        };
        KNOWN
            .binary_search(&code)
            .ok()
            .map(|index| Self(KNOWN[index]))
    }

    /// The subtag, e.g. `"fa"`.
    pub const fn as_str(self) -> &'static str {
        self.0
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Debug for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Language({})", self.0)
    }
}

/// What decided a detected language, for agents and audits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LanguageSource {
    /// The channel's hint.
    Hint,
    /// The message's script alone (Han → zh, Hangul → ko, ...).
    Script,
    /// Letters or common words only one language of a script uses.
    Words,
    /// Nothing decided: the rule set's default.
    Default,
}

/// A detected language and what decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectedLanguage {
    pub language: Language,
    pub source: LanguageSource,
}

/// Only the start of a long message is looked at: its language does not
/// change halfway, and detection stays cheap on a 1 MB email.
const MAX_DETECT_CHARS: usize = 1024;
/// Common words are counted in the first words only, for the same reason.
const MAX_DETECT_WORDS: usize = 64;

/// The customer's language: `hint` when it names a known language,
/// otherwise detected from `text`, otherwise `default`.
pub fn detect_language(text: &str, hint: Option<&str>, default: Language) -> DetectedLanguage {
    if let Some(language) = hint.and_then(Language::parse) {
        return DetectedLanguage {
            language,
            source: LanguageSource::Hint,
        };
    }
    let sample: String = if is_nfkc_quick(text.chars().take(MAX_DETECT_CHARS)) == IsNormalized::Yes
    {
        text.chars().take(MAX_DETECT_CHARS).collect()
    } else {
        text.chars().take(MAX_DETECT_CHARS).nfkc().collect()
    };
    let counts = ScriptCounts::count(&sample);
    let decided = |language: Language, source| DetectedLanguage { language, source };
    let by_script = |code: &'static str| decided(Language(code), LanguageSource::Script);
    let Some(script) = counts.dominant() else {
        return decided(default, LanguageSource::Default);
    };
    match script {
        // Japanese writes kanji between kana; Chinese has at most a stray の.
        Script::Cjk if counts.kana * 5 >= counts.han + counts.kana => by_script("ja"),
        Script::Cjk => by_script("zh"),
        Script::Hangul => by_script("ko"),
        Script::Greek => by_script("el"),
        Script::Hebrew => by_script("he"),
        Script::Thai => by_script("th"),
        Script::Bengali => by_script("bn"),
        Script::Tamil => by_script("ta"),
        Script::Georgian => by_script("ka"),
        Script::Armenian => by_script("hy"),
        Script::Devanagari => shared_script(&["hi", "mr", "ne", "sa"], default),
        Script::Cyrillic if sample.contains(['і', 'ї', 'є', 'ґ', 'І', 'Ї', 'Є', 'Ґ']) => {
            decided(Language("uk"), LanguageSource::Words)
        }
        Script::Cyrillic => shared_script(
            &["ru", "uk", "be", "bg", "sr", "mk", "kk", "ky", "mn", "tg"],
            default,
        ),
        Script::Arabic => arabic_script(&sample, default),
        Script::Latin => latin_script(&sample, default),
    }
}

/// A script several languages write, with nothing to tell them apart: the
/// default if it is one of them, else the first (the most spoken).
fn shared_script(languages: &[&'static str], default: Language) -> DetectedLanguage {
    if languages.contains(&default.0) {
        DetectedLanguage {
            language: default,
            source: LanguageSource::Default,
        }
    } else {
        DetectedLanguage {
            language: Language(languages[0]),
            source: LanguageSource::Script,
        }
    }
}

/// The language with the highest score; a tie goes to the default when it
/// is among the tied, else to the earliest candidate. `None` when nothing
/// scored.
fn best_score(scores: &[(&'static str, u32)], default: Language) -> Option<Language> {
    let top = scores.iter().map(|&(_, score)| score).max()?;
    if top == 0 {
        return None;
    }
    let mut tied = scores.iter().filter(|&&(_, score)| score == top);
    let first = tied.clone().next()?.0;
    if tied.any(|&(code, _)| code == default.0) {
        Some(default)
    } else {
        Some(Language(first))
    }
}

/// Persian, Arabic and Urdu share the Arabic script. Each has letters the
/// others do not use (Persian پ چ ژ گ and its own ی ک; Arabic ة ى and its
/// own ي ك; Urdu ٹ ڈ ڑ ں ے ہ) and very common words the others do not use.
/// "سلام" and "من" are shared and count for nobody.
fn arabic_script(sample: &str, default: Language) -> DetectedLanguage {
    let (mut fa, mut ar, mut ur) = (0u32, 0u32, 0u32);
    for c in sample.chars() {
        match c {
            'پ' | 'چ' | 'ژ' | 'گ' | 'ۀ' => fa += 2,
            '\u{06CC}' | '\u{06A9}' => fa += 1,
            'ٹ' | 'ڈ' | 'ڑ' | 'ں' | 'ے' | 'ۓ' | 'ہ' | 'ھ' => ur += 3,
            'ة' => ar += 2,
            'ى' | '\u{064A}' | '\u{0643}' => ar += 1,
            _ => {}
        }
    }
    for word in words(sample).take(MAX_DETECT_WORDS) {
        if is_persian_word(&word) {
            fa += 3;
        }
        if is_arabic_word(&word) {
            ar += 3;
        } else if word.starts_with("ال") && word.chars().count() > 3 {
            // The Arabic article; Persian borrows only a few such words.
            ar += 1;
        }
        if is_urdu_word(&word) {
            ur += 3;
        }
    }
    match best_score(&[("ar", ar), ("fa", fa), ("ur", ur)], default) {
        Some(language) => DetectedLanguage {
            language,
            source: LanguageSource::Words,
        },
        None => shared_script(&["ar", "fa", "ur", "ps", "ckb", "ku", "sd", "ug"], default),
    }
}

/// Latin script: common words of the languages customers write to
/// support in, including Persian and Arabic in Latin letters (Finglish,
/// Arabizi). Nothing recognised is the default.
fn latin_script(sample: &str, default: Language) -> DetectedLanguage {
    let mut scores = [
        ("en", 0u32),
        ("es", 0),
        ("fr", 0),
        ("de", 0),
        ("pt", 0),
        ("it", 0),
        ("tr", 0),
        ("id", 0),
        ("fa", 0),
        ("ar", 0),
    ];
    for word in words(sample).take(MAX_DETECT_WORDS) {
        for (code, score) in &mut scores {
            if is_latin_word(code, &word) {
                *score += 1;
            }
        }
    }
    match best_score(&scores, default) {
        Some(language) => DetectedLanguage {
            language,
            source: LanguageSource::Words,
        },
        None => DetectedLanguage {
            language: default,
            source: LanguageSource::Default,
        },
    }
}

/// Lowercase words of `sample`, for comparison with the word lists:
/// Arabic diacritics and tatweel are skipped and hamza-carrying alefs are
/// plain alef (as people type them either way), but ي/ی and ك/ک are kept
/// (they tell Arabic from Persian). A ZWNJ splits "می‌خواهم" into "می"
/// and "خواهم", which is what the lists expect.
fn words(sample: &str) -> impl Iterator<Item = String> + '_ {
    let mut chars = sample.chars().peekable();
    std::iter::from_fn(move || {
        let mut word = String::new();
        for c in chars.by_ref() {
            match c {
                '\u{064B}'..='\u{065F}' | '\u{0670}' | '\u{0640}' => {}
                'أ' | 'إ' | 'آ' | 'ٱ' => word.push('ا'),
                '\'' | '’' if !word.is_empty() => word.push('\''),
                c if c.is_alphanumeric() => word.extend(c.to_lowercase()),
                _ if word.is_empty() => {}
                _ => return Some(word),
            }
        }
        (!word.is_empty()).then_some(word)
    })
}

fn is_persian_word(word: &str) -> bool {
    matches!(
        word,
        "است"
            | "هست"
            | "نیست"
            | "می"
            | "نمی"
            | "های"
            | "ها"
            | "را"
            | "این"
            | "آن"
            | "که"
            | "برای"
            | "از"
            | "با"
            | "تا"
            | "چرا"
            | "کجا"
            | "کجاست"
            | "چی"
            | "چه"
            | "خیلی"
            | "ممنون"
            | "مرسی"
            | "سفارش"
            | "سفارشم"
            | "لطفا"
            | "شما"
            | "ما"
            | "کنم"
            | "کنید"
            | "کردم"
            | "دارم"
            | "خواهم"
            | "خواستم"
            | "بله"
            | "نه"
            | "هنوز"
            | "پول"
            | "کی"
            | "چطور"
            | "وقت"
            | "بخیر"
            | "روز"
            | "ببخشید"
    )
}

fn is_arabic_word(word: &str) -> bool {
    matches!(
        word,
        "في" | "هل"
            | "على"
            | "الى"
            | "هذا"
            | "هذه"
            | "ان"
            | "لم"
            | "لا"
            | "ما"
            | "كيف"
            | "اين"
            | "متى"
            | "شكرا"
            | "اريد"
            | "طلبي"
            | "الطلب"
            | "مرحبا"
            | "عندي"
            | "لقد"
            | "تم"
            | "كان"
            | "ليس"
            | "ذلك"
            | "التي"
            | "الذي"
            | "يا"
            | "لماذا"
            | "حتى"
            | "الان"
            | "اليوم"
            | "ممكن"
            | "انا"
            | "نعم"
            | "عن"
            | "او"
            | "مع"
            | "فى"
    )
}

fn is_urdu_word(word: &str) -> bool {
    matches!(
        word,
        "میں"
            | "ہے"
            | "ہیں"
            | "کا"
            | "کی"
            | "کے"
            | "اور"
            | "آپ"
            | "نہیں"
            | "کیا"
            | "مجھے"
            | "ہوں"
    )
}

fn is_latin_word(code: &str, word: &str) -> bool {
    match code {
        "en" => matches!(
            word,
            "the"
                | "is"
                | "are"
                | "my"
                | "i"
                | "you"
                | "your"
                | "hello"
                | "hi"
                | "hey"
                | "please"
                | "thanks"
                | "thank"
                | "where"
                | "when"
                | "what"
                | "how"
                | "why"
                | "can"
                | "could"
                | "not"
                | "have"
                | "has"
                | "was"
                | "and"
                | "of"
                | "it"
                | "this"
                | "with"
                | "for"
                | "want"
                | "need"
                | "help"
                | "still"
                | "yet"
                | "any"
                | "did"
                | "didn't"
                | "received"
                | "got"
                | "money"
                | "back"
                | "arrived"
                | "would"
                | "like"
                | "cancel"
                | "it's"
                | "i'm"
        ),
        "es" => matches!(
            word,
            "hola"
                | "gracias"
                | "pedido"
                | "donde"
                | "dónde"
                | "el"
                | "los"
                | "las"
                | "mi"
                | "por"
                | "favor"
                | "que"
                | "qué"
                | "es"
                | "está"
                | "quiero"
                | "reembolso"
                | "tengo"
                | "cuando"
                | "cuándo"
                | "necesito"
                | "ayuda"
                | "pero"
                | "con"
                | "para"
                | "una"
                | "del"
                | "todavía"
                | "llegado"
                | "buenos"
                | "días"
        ),
        "fr" => matches!(
            word,
            "bonjour"
                | "merci"
                | "commande"
                | "où"
                | "je"
                | "vous"
                | "est"
                | "le"
                | "les"
                | "mon"
                | "ma"
                | "remboursement"
                | "pas"
                | "avec"
                | "pour"
                | "une"
                | "des"
                | "suis"
                | "veux"
                | "quand"
                | "aide"
                | "svp"
                | "toujours"
                | "reçu"
                | "ai"
                | "j'ai"
                | "n'ai"
                | "c'est"
        ),
        "de" => matches!(
            word,
            "hallo"
                | "danke"
                | "bestellung"
                | "wo"
                | "ist"
                | "ich"
                | "meine"
                | "mein"
                | "nicht"
                | "und"
                | "die"
                | "der"
                | "das"
                | "bitte"
                | "rückerstattung"
                | "wann"
                | "habe"
                | "noch"
                | "sie"
                | "mit"
                | "für"
                | "guten"
                | "tag"
                | "erhalten"
                | "geld"
        ),
        "pt" => matches!(
            word,
            "olá"
                | "ola"
                | "obrigado"
                | "obrigada"
                | "pedido"
                | "onde"
                | "meu"
                | "minha"
                | "não"
                | "nao"
                | "reembolso"
                | "quero"
                | "você"
                | "voce"
                | "está"
                | "com"
                | "para"
                | "uma"
                | "ainda"
                | "recebi"
                | "bom"
                | "dia"
        ),
        "it" => matches!(
            word,
            "ciao"
                | "grazie"
                | "ordine"
                | "dove"
                | "il"
                | "mio"
                | "non"
                | "rimborso"
                | "voglio"
                | "ancora"
                | "ricevuto"
                | "buongiorno"
                | "per"
                | "sono"
                | "che"
        ),
        "tr" => matches!(
            word,
            "merhaba"
                | "teşekkürler"
                | "tesekkurler"
                | "sipariş"
                | "siparis"
                | "siparişim"
                | "nerede"
                | "iade"
                | "benim"
                | "bir"
                | "ve"
                | "bu"
                | "için"
                | "icin"
                | "ne"
                | "zaman"
                | "lütfen"
                | "lutfen"
                | "değil"
                | "yok"
                | "hala"
                | "hâlâ"
        ),
        "id" => matches!(
            word,
            "halo"
                | "terima"
                | "kasih"
                | "pesanan"
                | "saya"
                | "di"
                | "mana"
                | "tidak"
                | "apa"
                | "sudah"
                | "belum"
                | "dan"
                | "yang"
                | "ini"
                | "itu"
                | "mohon"
                | "tolong"
                | "bisa"
                | "pengembalian"
                | "dana"
        ),
        "fa" => matches!(
            word,
            "salam"
                | "mersi"
                | "mamnoon"
                | "mamnun"
                | "sefaresh"
                | "sefareshe"
                | "sefaresham"
                | "kojast"
                | "koja"
                | "chera"
                | "lotfan"
                | "hast"
                | "nist"
                | "shoma"
                | "mikham"
                | "kheili"
                | "kheyli"
                | "hanooz"
                | "hanuz"
                | "pool"
                | "kardam"
                | "chi"
                | "dastet"
                | "khobi"
        ),
        "ar" => matches!(
            word,
            "salam"
                | "marhaba"
                | "shukran"
                | "shokran"
                | "ahlan"
                | "wein"
                | "fein"
                | "talabi"
                | "keefak"
                | "kifak"
                | "inshallah"
                | "yalla"
                | "ana"
                | "3ayez"
                | "3awez"
                | "fi"
                | "mish"
                | "leh"
                | "emta"
        ),
        _ => false,
    }
}

#[derive(Default)]
struct ScriptCounts {
    latin: usize,
    arabic: usize,
    han: usize,
    kana: usize,
    hangul: usize,
    cyrillic: usize,
    greek: usize,
    hebrew: usize,
    thai: usize,
    devanagari: usize,
    bengali: usize,
    tamil: usize,
    georgian: usize,
    armenian: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Script {
    Latin,
    Arabic,
    Cjk,
    Hangul,
    Cyrillic,
    Greek,
    Hebrew,
    Thai,
    Devanagari,
    Bengali,
    Tamil,
    Georgian,
    Armenian,
}

impl ScriptCounts {
    fn count(text: &str) -> Self {
        let mut counts = Self::default();
        for c in text.chars() {
            match c {
                'a'..='z' | 'A'..='Z' | '\u{00C0}'..='\u{024F}' | '\u{1E00}'..='\u{1EFF}' => {
                    counts.latin += 1;
                }
                '\u{0600}'..='\u{06FF}'
                | '\u{0750}'..='\u{077F}'
                | '\u{08A0}'..='\u{08FF}'
                | '\u{FB50}'..='\u{FDFF}'
                | '\u{FE70}'..='\u{FEFF}'
                    if c.is_alphabetic() =>
                {
                    counts.arabic += 1;
                }
                '\u{3040}'..='\u{30FF}' | '\u{31F0}'..='\u{31FF}' | '\u{FF66}'..='\u{FF9F}' => {
                    counts.kana += 1;
                }
                '\u{3400}'..='\u{4DBF}'
                | '\u{4E00}'..='\u{9FFF}'
                | '\u{F900}'..='\u{FAFF}'
                | '\u{20000}'..='\u{3FFFF}' => counts.han += 1,
                '\u{1100}'..='\u{11FF}' | '\u{3130}'..='\u{318F}' | '\u{AC00}'..='\u{D7AF}' => {
                    counts.hangul += 1;
                }
                '\u{0400}'..='\u{04FF}' => counts.cyrillic += 1,
                '\u{0370}'..='\u{03FF}' | '\u{1F00}'..='\u{1FFF}' => counts.greek += 1,
                '\u{0590}'..='\u{05FF}' => counts.hebrew += 1,
                '\u{0E00}'..='\u{0E7F}' => counts.thai += 1,
                '\u{0900}'..='\u{097F}' => counts.devanagari += 1,
                '\u{0980}'..='\u{09FF}' => counts.bengali += 1,
                '\u{0B80}'..='\u{0BFF}' => counts.tamil += 1,
                '\u{10A0}'..='\u{10FF}' => counts.georgian += 1,
                '\u{0530}'..='\u{058F}' => counts.armenian += 1,
                _ => {}
            }
        }
        counts
    }

    /// The script with the most weight; a Han or kana character weighs as
    /// much as a short word of an alphabet (three letters). Ties go to the
    /// earlier script in this list, so the answer is deterministic.
    fn dominant(&self) -> Option<Script> {
        let candidates = [
            (Script::Cjk, (self.han + self.kana) * 3),
            (Script::Hangul, self.hangul * 2),
            (Script::Arabic, self.arabic),
            (Script::Latin, self.latin),
            (Script::Cyrillic, self.cyrillic),
            (Script::Greek, self.greek),
            (Script::Hebrew, self.hebrew),
            (Script::Thai, self.thai),
            (Script::Devanagari, self.devanagari),
            (Script::Bengali, self.bengali),
            (Script::Tamil, self.tamil),
            (Script::Georgian, self.georgian),
            (Script::Armenian, self.armenian),
        ];
        let mut best = None;
        let mut best_weight = 0;
        for (script, weight) in candidates {
            if weight > best_weight {
                best = Some(script);
                best_weight = weight;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect(text: &str, default: &str) -> (&'static str, LanguageSource) {
        let detected = detect_language(text, None, Language::parse(default).unwrap());
        (detected.language.as_str(), detected.source)
    }

    #[test]
    fn parses_the_tags_channels_send() {
        assert_eq!(Language::parse("zh-CN").unwrap().as_str(), "zh");
        assert_eq!(Language::parse("fa_IR").unwrap().as_str(), "fa");
        assert_eq!(Language::parse("pt-br").unwrap().as_str(), "pt");
        assert_eq!(Language::parse(" EN ").unwrap().as_str(), "en");
        assert_eq!(Language::parse("iw").unwrap().as_str(), "he");
        assert_eq!(Language::parse("yue-HK").unwrap().as_str(), "yue");
        assert_eq!(Language::parse("und"), None);
        assert_eq!(Language::parse("x-klingon"), None);
        assert_eq!(Language::parse(""), None);
        assert_eq!(Language::parse("فا"), None);
        assert!(KNOWN.windows(2).all(|pair| pair[0] < pair[1]), "sorted");
    }

    #[test]
    fn a_channel_hint_wins_over_the_text() {
        let detected = detect_language("hello", Some("fa"), Language::ENGLISH);
        assert_eq!(detected.language, Language::PERSIAN);
        assert_eq!(detected.source, LanguageSource::Hint);
        // A web chat page in zh-CN.
        let detected = detect_language("ok", Some("zh-CN"), Language::ENGLISH);
        assert_eq!(detected.language, Language::CHINESE);
        // An unusable hint is ignored, not trusted.
        let detected =
            detect_language("你好，请问我的订单到哪了？", Some("und"), Language::ENGLISH);
        assert_eq!(detected.language, Language::CHINESE);
        assert_eq!(detected.source, LanguageSource::Script);
    }

    #[test]
    fn persian_and_arabic_are_told_apart() {
        use LanguageSource::Words;
        // Persian, Persian keyboard, with ZWNJ.
        assert_eq!(
            detect("سلام، سفارشم هنوز نرسیده. کی می‌رسه؟", "en"),
            ("fa", Words)
        );
        // Persian typed on an Arabic keyboard (ي and ك): the words decide.
        assert_eq!(
            detect("سلام سفارش من كجاست؟ خيلي ممنون", "ar"),
            ("fa", Words)
        );
        assert_eq!(detect("پولم را کی برمی‌گردانید؟", "en"), ("fa", Words));
        // Arabic, with and without diacritics.
        assert_eq!(
            detect("مرحبا، أين طلبي رقم ١٢٣٤؟ لقد دفعت منذ أسبوع", "fa"),
            ("ar", Words)
        );
        assert_eq!(detect("أُرِيدُ اسْتِرْدَادَ المَال", "fa"), ("ar", Words));
        assert_eq!(detect("هل يمكنني إلغاء الطلب؟ شكراً", "en"), ("ar", Words));
        // Urdu has letters of its own.
        assert_eq!(
            detect("میرا آرڈر ابھی تک نہیں پہنچا ہے", "en"),
            ("ur", Words)
        );
        // "سلام" alone is both: the default decides, else Arabic.
        assert_eq!(detect("سلام", "fa"), ("fa", LanguageSource::Default));
        assert_eq!(detect("سلام", "en"), ("ar", LanguageSource::Script));
    }

    #[test]
    fn cjk_by_script() {
        assert_eq!(
            detect("你好，我的订单什么时候发货？", "en"),
            ("zh", LanguageSource::Script)
        );
        assert_eq!(
            detect("ＯＲＤＥＲ１２３ 退款", "en"),
            ("zh", LanguageSource::Script)
        );
        assert_eq!(
            detect("注文した商品がまだ届きません", "en"),
            ("ja", LanguageSource::Script)
        );
        assert_eq!(detect("주문한 상품이 아직 안 왔어요", "en").0, "ko");
    }

    #[test]
    fn latin_script_by_common_words_else_the_default() {
        use LanguageSource::{Default, Words};
        assert_eq!(
            detect("Hi, where is my order? It hasn't arrived yet.", "fa"),
            ("en", Words)
        );
        assert_eq!(detect("Hola, ¿dónde está mi pedido?", "en"), ("es", Words));
        assert_eq!(
            detect("Bonjour, je n'ai pas reçu ma commande", "en"),
            ("fr", Words)
        );
        assert_eq!(detect("salam, sefaresh man kojast?", "en"), ("fa", Words));
        assert_eq!(detect("ok", "fa"), ("fa", Default));
        assert_eq!(detect("ORDER-55821", "zh"), ("zh", Default));
        assert_eq!(detect("👍🙏", "ar"), ("ar", Default));
        assert_eq!(detect("", "en"), ("en", Default));
    }

    #[test]
    fn cyrillic() {
        assert_eq!(detect("Здравствуйте, где мой заказ?", "en").0, "ru");
        assert_eq!(detect("Де моє замовлення? Дякую", "en").0, "uk");
    }
}
