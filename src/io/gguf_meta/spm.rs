//! The little of SentencePiece's `tokenizer.model` (a `ModelProto` protobuf) that llama.cpp's
//! converter reads through `SentencePieceProcessor`: each piece's text, score and type, in id
//! order. A hand-written protobuf walk: every length and count is checked against the bytes left,
//! so a hostile file gives [`SpmError`], never a panic or an allocation larger than the file.

use thiserror::Error;

/// `ModelProto.pieces` (field 1, repeated `SentencePiece`).
const FIELD_PIECES: u64 = 1;
/// `SentencePiece.piece` (string).
const FIELD_PIECE: u64 = 1;
/// `SentencePiece.score` (float).
const FIELD_SCORE: u64 = 2;
/// `SentencePiece.type` (enum `Type`).
const FIELD_TYPE: u64 = 3;

/// Protobuf wire types.
const VARINT: u64 = 0;
const I64: u64 = 1;
const LEN: u64 = 2;
const I32: u64 = 5;

/// `SentencePiece.Type`, as `sentencepiece_model.proto` numbers it (NORMAL is the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    /// An ordinary piece.
    Normal,
    /// The unknown piece.
    Unknown,
    /// A control symbol (`<s>`, `</s>`, …).
    Control,
    /// A user-defined symbol.
    UserDefined,
    /// An unused piece.
    Unused,
    /// A byte-fallback piece (`<0x41>`).
    Byte,
}

impl PieceType {
    fn from_proto(v: u64) -> Option<Self> {
        Some(match v {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }
}

/// One vocabulary entry of a SentencePiece model.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    /// The piece's text (`▁the`, `<0x0A>`).
    pub piece: String,
    /// Its score (log probability for unigram, merge rank for BPE).
    pub score: f32,
    /// Its type.
    pub kind: PieceType,
}

/// Why a `tokenizer.model` cannot be read.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum SpmError {
    /// The bytes end inside a field.
    #[error("tokenizer.model is truncated ({0})")]
    Truncated(&'static str),
    /// A field is malformed (bad wire type, overlong varint, invalid UTF-8, unknown piece type).
    #[error("tokenizer.model is not a valid SentencePiece model: {0}")]
    Invalid(String),
    /// More pieces than the caller allows.
    #[error("tokenizer.model holds more than {max} pieces")]
    TooManyPieces {
        /// The limit.
        max: usize,
    },
}

/// A cursor over protobuf bytes.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn done(&self) -> bool {
        self.pos >= self.b.len()
    }

    fn varint(&mut self) -> Result<u64, SpmError> {
        let mut v = 0u64;
        for i in 0..10 {
            let byte = *self.b.get(self.pos).ok_or(SpmError::Truncated("varint"))?;
            self.pos += 1;
            if i == 9 && byte > 1 {
                return Err(SpmError::Invalid("varint longer than 64 bits".into()));
            }
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(SpmError::Invalid("varint longer than 10 bytes".into()))
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], SpmError> {
        let left = self.b.len() - self.pos;
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= left)
            .ok_or(SpmError::Truncated(what))?;
        let out = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// A field key: (field number, wire type).
    fn key(&mut self) -> Result<(u64, u64), SpmError> {
        let k = self.varint()?;
        Ok((k >> 3, k & 7))
    }

    /// Skip a field of wire type `wire` that is not read.
    fn skip(&mut self, wire: u64) -> Result<(), SpmError> {
        match wire {
            VARINT => self.varint().map(|_| ()),
            I64 => self.take(8, "fixed64").map(|_| ()),
            LEN => {
                let n = self.varint()?;
                self.take(n, "length-delimited field").map(|_| ())
            }
            I32 => self.take(4, "fixed32").map(|_| ()),
            w => Err(SpmError::Invalid(format!("wire type {w}"))),
        }
    }
}

/// One `SentencePiece` message.
fn parse_piece(b: &[u8]) -> Result<Piece, SpmError> {
    let mut c = Cursor { b, pos: 0 };
    let mut piece = Piece {
        piece: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    while !c.done() {
        match c.key()? {
            (FIELD_PIECE, LEN) => {
                let n = c.varint()?;
                let raw = c.take(n, "piece text")?;
                piece.piece = std::str::from_utf8(raw)
                    .map_err(|_| SpmError::Invalid("a piece is not valid UTF-8".into()))?
                    .to_string();
            }
            (FIELD_SCORE, I32) => {
                let raw = c.take(4, "score")?;
                piece.score = f32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
            }
            (FIELD_TYPE, VARINT) => {
                let v = c.varint()?;
                piece.kind = PieceType::from_proto(v)
                    .ok_or_else(|| SpmError::Invalid(format!("piece type {v}")))?;
            }
            (_, wire) => c.skip(wire)?,
        }
    }
    Ok(piece)
}

/// The pieces of a serialized `ModelProto`, in id order; at most `max_pieces` of them.
pub fn parse_pieces(bytes: &[u8], max_pieces: usize) -> Result<Vec<Piece>, SpmError> {
    let mut c = Cursor { b: bytes, pos: 0 };
    let mut out = Vec::new();
    while !c.done() {
        match c.key()? {
            (FIELD_PIECES, LEN) => {
                if out.len() >= max_pieces {
                    return Err(SpmError::TooManyPieces { max: max_pieces });
                }
                let n = c.varint()?;
                out.push(parse_piece(c.take(n, "piece")?)?);
            }
            (_, wire) => c.skip(wire)?,
        }
    }
    if out.is_empty() {
        return Err(SpmError::Invalid("no pieces".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(text: &str, score: f32, kind: u8) -> Vec<u8> {
        let mut p = vec![0x0a, text.len() as u8];
        p.extend_from_slice(text.as_bytes());
        p.push(0x15);
        p.extend_from_slice(&score.to_le_bytes());
        p.extend_from_slice(&[0x18, kind]);
        let mut out = vec![0x0a, p.len() as u8];
        out.extend(p);
        out
    }

    /// Pieces come back in order with their scores and types; other fields are skipped.
    #[test]
    fn reads_pieces_and_skips_the_rest() {
        let mut b = piece("<unk>", 0.0, 2);
        b.extend(piece("▁a", -1.5, 1));
        // trainer_spec (field 2) with a varint inside: skipped.
        b.extend([0x12, 0x02, 0x08, 0x01]);
        let p = parse_pieces(&b, 10).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].kind, PieceType::Unknown);
        assert_eq!(p[1].piece, "▁a");
        assert_eq!(p[1].score, -1.5);
    }

    /// Truncations, absurd lengths, bad wire types and too many pieces are errors.
    #[test]
    fn hostile_bytes_are_errors() {
        let good = piece("ab", 1.0, 1);
        for cut in 1..good.len() {
            assert!(parse_pieces(&good[..cut], 10).is_err(), "cut {cut}");
        }
        // A length of 2^63.
        let huge = [0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(matches!(
            parse_pieces(&huge, 10),
            Err(SpmError::Truncated(_))
        ));
        assert!(parse_pieces(&[0x0f], 10).is_err());
        assert!(parse_pieces(&[0xff; 11], 10).is_err());
        let mut two = good.clone();
        two.extend(&good);
        assert_eq!(
            parse_pieces(&two, 1),
            Err(SpmError::TooManyPieces { max: 1 })
        );
        assert!(parse_pieces(&[], 10).is_err());
    }
}
