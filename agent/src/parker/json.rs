//! A writer for the exact bytes Python's `json.dumps` produces with its defaults
//! (`", "` and `": "` separators, `ensure_ascii=True`).
//!
//! Parker nodes verify a signature over the response line, and the reference broker produced
//! that line with `json.dumps`; serde_json's compact output differs in separators and in how
//! non-ASCII text is written, so the response is assembled by hand with these helpers.

use std::fmt::Write as _;

/// Appends `s` as a JSON string literal the way Python's `json.dumps` writes it:
/// `"` and `\` escaped, the usual short escapes, every other byte outside printable ASCII
/// as a lowercase `\uXXXX` (UTF-16 surrogate pairs above U+FFFF).
pub fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// Writes one JSON object with Python's default separators, fields in insertion order.
pub struct Object<'a> {
    out: &'a mut String,
    first: bool,
}

impl<'a> Object<'a> {
    pub fn begin(out: &'a mut String) -> Self {
        out.push('{');
        Object { out, first: true }
    }

    fn key(&mut self, key: &str) -> &mut String {
        if !self.first {
            self.out.push_str(", ");
        }
        self.first = false;
        push_str(self.out, key);
        self.out.push_str(": ");
        self.out
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        let out = self.key(key);
        push_str(out, value);
        self
    }

    pub fn int(&mut self, key: &str, value: i64) -> &mut Self {
        let out = self.key(key);
        let _ = write!(out, "{value}");
        self
    }

    /// A field whose value the caller writes itself (a nested array or object).
    pub fn raw(&mut self, key: &str, write_value: impl FnOnce(&mut String)) -> &mut Self {
        let out = self.key(key);
        write_value(out);
        self
    }

    pub fn end(self) {
        self.out.push('}');
    }
}

/// Writes a JSON array with Python's `", "` separator; `write_item` writes each element.
pub fn push_array<T>(out: &mut String, items: &[T], mut write_item: impl FnMut(&mut String, &T)) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_item(out, item);
    }
    out.push(']');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(s: &str) -> String {
        let mut out = String::new();
        push_str(&mut out, s);
        out
    }

    #[test]
    fn strings_are_escaped_like_python_ensure_ascii() {
        // Expected values are what `json.dumps(s)` prints in CPython 3.11.
        assert_eq!(quoted("plain+/="), r#""plain+/=""#);
        assert_eq!(quoted("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(quoted("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(quoted("\u{1}\u{1f}\u{7f}"), r#""\u0001\u001f\u007f""#);
        assert_eq!(quoted("grüß"), r#""gr\u00fc\u00df""#);
        assert_eq!(quoted("€"), r#""\u20ac""#);
        assert_eq!(quoted("😀"), r#""\ud83d\ude00""#);
    }

    #[test]
    fn objects_and_arrays_use_python_separators() {
        let mut out = String::new();
        let mut obj = Object::begin(&mut out);
        obj.str("a", "x").int("b", -3).raw("c", |o| {
            push_array(o, &[1, 2], |o, v| {
                let _ = write!(o, "{v}");
            })
        });
        obj.raw("d", |o| push_array::<i32>(o, &[], |_, _| {}));
        obj.end();
        assert_eq!(out, r#"{"a": "x", "b": -3, "c": [1, 2], "d": []}"#);
    }
}
