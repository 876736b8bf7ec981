//! Chat templates: renders a model's Jinja `chat_template` with minijinja exactly the way
//! transformers' `apply_chat_template(tokenize=False)` renders it with Jinja2 (trim_blocks,
//! lstrip_blocks, `raise_exception`, Python-style `tojson` and string methods).

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::io::gguf::Gguf;
use crate::io::tokenizer::TokenizerError;

/// One chat turn, as the chat template sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    /// "system", "user" or "assistant".
    pub role: String,
    /// The message text.
    pub content: String,
}

/// A Jinja chat template plus the special-token strings it may reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    /// The Jinja source.
    source: String,
    /// `bos_token`, `eos_token`, `unk_token`, `pad_token` values visible to the template.
    special_tokens: Vec<(&'static str, String)>,
}

impl ChatTemplate {
    /// A template with the given `bos_token` / `eos_token` strings.
    pub fn new(source: String, bos_token: String, eos_token: String) -> Self {
        ChatTemplate {
            source,
            special_tokens: vec![("bos_token", bos_token), ("eos_token", eos_token)],
        }
    }

    /// The GGUF's `tokenizer.chat_template` with its bos/eos/unk/pad token strings (as
    /// transformers passes them); `None` if the file has no template. Fails on a bad template.
    pub fn from_gguf(g: &Gguf) -> Result<Option<ChatTemplate>, TokenizerError> {
        let Some(source) = g.get_opt_str("tokenizer.chat_template")? else {
            return Ok(None);
        };
        let tokens = g
            .get_opt_str_array("tokenizer.ggml.tokens")?
            .unwrap_or_default();
        let mut special_tokens = Vec::new();
        for (name, key) in [
            ("bos_token", "tokenizer.ggml.bos_token_id"),
            ("eos_token", "tokenizer.ggml.eos_token_id"),
            ("unk_token", "tokenizer.ggml.unknown_token_id"),
            ("pad_token", "tokenizer.ggml.padding_token_id"),
        ] {
            let id = g.get_opt_u64(key)?;
            let token = id.and_then(|i| tokens.get(usize::try_from(i).ok()?));
            if let Some(t) = token {
                special_tokens.push((name, t.to_string()));
            }
        }
        let template = ChatTemplate {
            source: source.to_string(),
            special_tokens,
        };
        template.environment()?;
        Ok(Some(template))
    }

    /// The Jinja source of the template.
    /// The special-token strings the template sees (`bos_token`, `eos_token`, ...).
    pub fn special_tokens(&self) -> &[(&'static str, String)] {
        &self.special_tokens
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// A minijinja environment configured like transformers' Jinja2 sandbox, holding the template.
    fn environment(&self) -> Result<Environment<'_>, TokenizerError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template("chat", &self.source)
            .map_err(|e| TokenizerError::Template(e.to_string()))?;
        Ok(env)
    }

    /// Renders `messages` like transformers' `apply_chat_template(tokenize=False)`; like it,
    /// refuses an empty conversation.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        if messages.is_empty() {
            return Err(TokenizerError::Template(
                "cannot apply a chat template to an empty conversation".into(),
            ));
        }
        let env = self.environment()?;
        let template = env
            .get_template("chat")
            .map_err(|e| TokenizerError::Template(e.to_string()))?;
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", Value::from_serialize(messages)),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
        ];
        for (name, token) in &self.special_tokens {
            ctx.push((name, Value::from(token.as_str())));
        }
        let ctx: Value = ctx.into_iter().collect();
        template
            .render(ctx)
            .map_err(|e| TokenizerError::Template(template_error_message(&e)))
    }
}

/// Prints values like Jinja2 under Python: `True`/`False`/`None` rather than minijinja's `true`/`none`.
fn python_formatter(
    out: &mut minijinja::Output,
    state: &minijinja::State,
    value: &Value,
) -> Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::Bool => out
            .write_str(if value.is_true() { "True" } else { "False" })
            .map_err(minijinja::Error::from),
        ValueKind::None => out.write_str("None").map_err(minijinja::Error::from),
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// The message of a render error, preferring a `raise_exception` text over minijinja's wrapping.
fn template_error_message(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(detail) if e.kind() == ErrorKind::InvalidOperation => detail.to_string(),
        _ => e.to_string(),
    }
}

/// The template's `raise_exception(message)`: aborts rendering with that message.
fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// transformers' `tojson` filter: Python `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)` without Jinja's HTML escaping.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(match v.as_i64() {
            Some(n) => " ".repeat(usize::try_from(n).unwrap_or(0)),
            None => v.as_str().map(str::to_string).unwrap_or_default(),
        }),
    };
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "tojson separators must be a pair",
            ));
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let style = JsonStyle {
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    style.write(value, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

/// Formatting options of Python's `json.dumps`.
struct JsonStyle {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl JsonStyle {
    /// Appends `value` as JSON at nesting `level`.
    fn write(&self, value: &Value, level: usize, out: &mut String) -> Result<(), minijinja::Error> {
        let unsupported = || {
            minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize {} value", value.kind()),
            )
        };
        match value.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
            ValueKind::Number => {
                let f = f64::try_from(value.clone()).map_err(|_| unsupported())?;
                out.push_str(&py_float_repr(f));
            }
            ValueKind::String => out.push_str(&json_string(value.as_str().unwrap_or_default())),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.write_container(out, level, ('[', ']'), &items, |v, lvl, o| {
                    self.write(v, lvl, o)
                })?;
            }
            ValueKind::Map => {
                let mut entries = Vec::new();
                for key in value.try_iter()? {
                    let item = value.get_item(&key)?;
                    entries.push((json_key(&key).ok_or_else(unsupported)?, item));
                }
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.write_container(out, level, ('{', '}'), &entries, |(k, v), lvl, o| {
                    o.push_str(&json_string(k));
                    o.push_str(&self.key_sep);
                    self.write(v, lvl, o)
                })?;
            }
            _ => return Err(unsupported()),
        }
        Ok(())
    }

    /// Writes `[a, b]` / `{...}` with Python's separators and indentation.
    fn write_container<T>(
        &self,
        out: &mut String,
        level: usize,
        (open, close): (char, char),
        items: &[T],
        mut write_item: impl FnMut(&T, usize, &mut String) -> Result<(), minijinja::Error>,
    ) -> Result<(), minijinja::Error> {
        out.push(open);
        if items.is_empty() {
            out.push(close);
            return Ok(());
        }
        let newline = |o: &mut String, lvl: usize| {
            if let Some(ind) = &self.indent {
                o.push('\n');
                o.push_str(&ind.repeat(lvl));
            }
        };
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            newline(out, level + 1);
            write_item(item, level + 1, out)?;
        }
        newline(out, level);
        out.push(close);
        Ok(())
    }
}

/// A JSON object key as Python's json module writes it (str, int, bool, None keys).
fn json_key(key: &Value) -> Option<String> {
    match key.kind() {
        ValueKind::String => key.as_str().map(str::to_string),
        ValueKind::Number if key.is_integer() => Some(key.to_string()),
        ValueKind::Number => f64::try_from(key.clone()).ok().map(py_float_repr),
        ValueKind::Bool => Some(if key.is_true() { "true" } else { "false" }.into()),
        ValueKind::None => Some("null".into()),
        _ => None,
    }
}

/// A JSON string literal with Python's `ensure_ascii=False` escaping (same as serde_json's).
fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// Python's `repr(float)` as json.dumps writes it ("1.0", "1e-05", "1.5e+16", "NaN").
pub(crate) fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let plain = format!("{f}");
        if plain.contains('.') {
            plain
        } else {
            format!("{plain}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::io::tokenizer::tests::byte_level_gguf;

    /// A template using namespace, loop controls, Python string methods, `tojson` and bool output.
    const RICH_TEMPLATE: &str = "{%- set ns = namespace(sys='', n=0) -%}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- set ns.sys = messages[0]['content'].strip() -%}\n{%- endif -%}\n{{ bos_token }}\n{% for m in messages %}\n  {% if m.role == 'system' %}{% continue %}{% endif %}\n  {% if m.content.startswith('STOP') %}{% break %}{% endif %}\n  {% set ns.n = ns.n + 1 %}\n[{{ loop.index }}] {{ m.role | upper }}: {{ m.content | trim }}{{ eos_token }}\n{% endfor %}\nsys={{ ns.sys | tojson }} n={{ ns.n }} tools={{ tools is none }} {{ {'a': [1, 2.5, none, true], 'b': 'x\"y\\u00e9'} | tojson }}\n{{ messages | tojson(indent=2) }}\n{% if add_generation_prompt %}ASSISTANT:{% endif %}\n";

    pub(crate) fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    /// Expected strings were rendered by Jinja2 3.1.6 through transformers 5.24.0
    /// (`render_jinja_template(..., bos_token="<s>", eos_token="</s>")`).
    #[test]
    fn chat_template_matches_jinja2() {
        let t = ChatTemplate::new(RICH_TEMPLATE.into(), "<s>".into(), "</s>".into());
        let first = [
            msg("system", "  Be brief.  "),
            msg("user", " Hi <b>there</b> "),
            msg("assistant", "Hello!\n"),
        ];
        let want = "<s>\n[2] USER: Hi <b>there</b></s>\n[3] ASSISTANT: Hello!</s>\nsys=\"Be brief.\" n=2 tools=True {\"a\": [1, 2.5, null, true], \"b\": \"x\\\"y\u{e9}\"}\n[\n  {\n    \"role\": \"system\",\n    \"content\": \"  Be brief.  \"\n  },\n  {\n    \"role\": \"user\",\n    \"content\": \" Hi <b>there</b> \"\n  },\n  {\n    \"role\": \"assistant\",\n    \"content\": \"Hello!\\n\"\n  }\n]\nASSISTANT:";
        assert_eq!(t.render(&first, true).unwrap(), want);
        let second = [
            msg("user", "one"),
            msg("user", "STOP here"),
            msg("user", "never"),
        ];
        let want = "<s>\n[1] USER: one</s>\nsys=\"\" n=1 tools=True {\"a\": [1, 2.5, null, true], \"b\": \"x\\\"y\u{e9}\"}\n[\n  {\n    \"role\": \"user\",\n    \"content\": \"one\"\n  },\n  {\n    \"role\": \"user\",\n    \"content\": \"STOP here\"\n  },\n  {\n    \"role\": \"user\",\n    \"content\": \"never\"\n  }\n]\n";
        assert_eq!(t.render(&second, false).unwrap(), want);
    }

    #[test]
    fn chat_template_errors() {
        let src = "{% if messages[0].role == 'bogus' %}{{ raise_exception('bad role: ' + messages[0].role) }}{% endif %}ok";
        let t = ChatTemplate::new(src.into(), String::new(), String::new());
        let err = t.render(&[msg("bogus", "x")], false).unwrap_err();
        assert_eq!(err.to_string(), "chat template: bad role: bogus");
        assert_eq!(t.render(&[msg("user", "x")], false).unwrap(), "ok");
        assert!(t.render(&[], true).is_err());
        let broken = ChatTemplate::new("{% for %}".into(), String::new(), String::new());
        assert!(matches!(
            broken.render(&[msg("user", "x")], false),
            Err(TokenizerError::Template(_))
        ));
        assert!(
            ChatTemplate::from_gguf(&byte_level_gguf())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn python_float_repr() {
        assert_eq!(py_float_repr(1.0), "1.0");
        assert_eq!(py_float_repr(2.5), "2.5");
        assert_eq!(py_float_repr(1e-5), "1e-05");
        assert_eq!(py_float_repr(1.5e16), "1.5e+16");
        assert_eq!(py_float_repr(0.0001), "0.0001");
        assert_eq!(py_float_repr(123456789012345.0), "123456789012345.0");
        assert_eq!(py_float_repr(f64::NAN), "NaN");
    }
}
