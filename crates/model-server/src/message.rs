//! What travels through a mailbox slot: a request (which model, which side, the text) and its
//! reply (the vector with the fingerprint of the model that made it, or an error to raise).
//! A little length-prefixed byte format, because both ends are the same library: no
//! versioning, no self-description needed.

use semantic_encoder::TextKind;

#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The model's folder, as the requesting backend resolved it (its own semantic.model_dir).
    pub model_dir: String,
    pub kind: TextKind,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Vector {
        /// The manifest fingerprint of the model that embedded the text, so that an index
        /// scan can refuse a query embedded by another version of its model.
        fingerprint: String,
        vector: Vec<f32>,
    },
    Error(ErrorReply),
}

/// An error the requesting backend raises as its own.
#[derive(Clone, Debug, PartialEq)]
pub struct ErrorReply {
    /// The SQLSTATE, in PostgreSQL's packed integer form (MAKE_SQLSTATE).
    pub sqlstate: i32,
    pub message: String,
    pub hint: Option<String>,
}

impl ErrorReply {
    /// XX000 (internal_error), packed as PostgreSQL's MAKE_SQLSTATE does.
    pub const INTERNAL_ERROR: i32 = make_sqlstate(*b"XX000");
}

const fn make_sqlstate(code: [u8; 5]) -> i32 {
    let mut packed = 0;
    let mut i = 0;
    while i < 5 {
        packed |= (((code[i] - b'0') & 0x3f) as i32) << (6 * i);
        i += 1;
    }
    packed
}

struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, b: &[u8]) -> Option<()> {
        let end = self.at.checked_add(b.len())?;
        self.out.get_mut(self.at..end)?.copy_from_slice(b);
        self.at = end;
        Some(())
    }
    fn u32(&mut self, v: u32) -> Option<()> {
        self.bytes(&v.to_le_bytes())
    }
    fn str(&mut self, s: &str) -> Option<()> {
        self.u32(u32::try_from(s.len()).ok()?)?;
        self.bytes(s.as_bytes())
    }
}

struct Reader<'a> {
    input: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.input.len() < n {
            return None;
        }
        let (head, tail) = self.input.split_at(n);
        self.input = tail;
        Some(head)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.bytes(n)?.to_vec()).ok()
    }
}

impl Request {
    /// Writes the request into `out`; the length written, or None when it does not fit.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let mut w = Writer { out, at: 0 };
        w.u32(match self.kind {
            TextKind::Query => 0,
            TextKind::Passage => 1,
        })?;
        w.str(&self.model_dir)?;
        w.str(&self.text)?;
        Some(w.at)
    }

    /// Bytes the encoded request takes.
    pub fn encoded_len(&self) -> usize {
        12 + self.model_dir.len() + self.text.len()
    }

    pub fn decode(input: &[u8]) -> Option<Request> {
        let mut r = Reader { input };
        let kind = match r.u32()? {
            0 => TextKind::Query,
            1 => TextKind::Passage,
            _ => return None,
        };
        Some(Request {
            kind,
            model_dir: r.str()?,
            text: r.str()?,
        })
    }
}

impl Reply {
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let mut w = Writer { out, at: 0 };
        match self {
            Reply::Vector {
                fingerprint,
                vector,
            } => {
                w.u32(0)?;
                w.str(fingerprint)?;
                w.u32(u32::try_from(vector.len()).ok()?)?;
                for x in vector {
                    w.bytes(&x.to_le_bytes())?;
                }
            }
            Reply::Error(e) => {
                w.u32(1)?;
                w.u32(e.sqlstate as u32)?;
                w.str(&e.message)?;
                w.str(e.hint.as_deref().unwrap_or(""))?;
            }
        }
        Some(w.at)
    }

    pub fn decode(input: &[u8]) -> Option<Reply> {
        let mut r = Reader { input };
        match r.u32()? {
            0 => {
                let fingerprint = r.str()?;
                let n = r.u32()? as usize;
                let raw = r.bytes(n.checked_mul(4)?)?;
                let vector = raw
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                    .collect();
                Some(Reply::Vector {
                    fingerprint,
                    vector,
                })
            }
            1 => {
                let sqlstate = r.u32()? as i32;
                let message = r.str()?;
                let hint = Some(r.str()?).filter(|h| !h.is_empty());
                Some(Reply::Error(ErrorReply {
                    sqlstate,
                    message,
                    hint,
                }))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut buf = vec![0u8; 4096];
        let req = Request {
            model_dir: "/models/m".into(),
            kind: TextKind::Query,
            text: "héllo".into(),
        };
        let n = req.encode(&mut buf).unwrap();
        assert_eq!(n, req.encoded_len());
        assert_eq!(Request::decode(&buf[..n]), Some(req));
        for reply in [
            Reply::Vector {
                fingerprint: "abc".into(),
                vector: vec![1.5, -2.0, 0.0],
            },
            Reply::Error(ErrorReply {
                sqlstate: 42,
                message: "no".into(),
                hint: None,
            }),
            Reply::Error(ErrorReply {
                sqlstate: -7,
                message: "no".into(),
                hint: Some("do this".into()),
            }),
        ] {
            let n = reply.encode(&mut buf).unwrap();
            assert_eq!(Reply::decode(&buf[..n]), Some(reply));
        }
    }

    #[test]
    fn too_small_a_buffer_is_refused_and_truncation_detected() {
        let req = Request {
            model_dir: "m".into(),
            kind: TextKind::Passage,
            text: "x".repeat(100),
        };
        let mut small = [0u8; 50];
        assert_eq!(req.encode(&mut small), None);
        let mut buf = [0u8; 200];
        let n = req.encode(&mut buf).unwrap();
        assert_eq!(Request::decode(&buf[..n - 1]), None);
    }
}
