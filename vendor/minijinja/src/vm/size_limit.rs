//! PATCH(wgtune): checks computed values against
//! [`Environment::set_max_value_size`](crate::Environment::set_max_value_size).
//!
//! Upstream MiniJinja caps `string * n` and `range()` but not `~`, `+`,
//! `join`, `replace`, `indent`, format widths, list `+`, captured blocks or
//! macro output, so a template can double a string each loop iteration until
//! the process aborts on allocation.  The VM measures every value it computes
//! (see `produces_value`) and fails the render when one passes the limit; the
//! measurement is charged to the fuel so that fuel also bounds the total bytes
//! produced (at most `SIZE_PER_FUEL` bytes per fuel) and the time spent
//! measuring.

use crate::compiler::instructions::Instruction;
use crate::error::{Error, ErrorKind};
use crate::value::{Value, ValueKind};
use crate::vm::context::Stack;
use crate::vm::state::State;

/// How deep containers may nest under a value size limit.  Bounding depth
/// keeps recursive formatting, comparison and drop of values shallow, and
/// rejects namespaces that contain themselves.
pub const MAX_VALUE_DEPTH: usize = 64;

/// What one value (a list item, a map key or value) counts for in a size:
/// about the bytes it occupies, and the time measuring it takes relative to a
/// byte.
pub const ITEM_SIZE: usize = 8;

/// How many measured units (bytes or items) cost one fuel: measuring and
/// copying a few bytes is cheaper than executing an instruction.
pub const SIZE_PER_FUEL: usize = 8;

/// Whether `instr` pushes a newly computed value that must be measured.
pub(crate) fn produces_value(instr: &Instruction) -> bool {
    matches!(
        instr,
        Instruction::Add
            | Instruction::Mul
            | Instruction::StringConcat
            | Instruction::BuildList(_)
            | Instruction::BuildMap(_)
            | Instruction::BuildKwargs(_)
            | Instruction::EndCapture
            | Instruction::ApplyFilter(..)
            | Instruction::CallFunction(..)
            | Instruction::CallMethod(..)
            | Instruction::CallObject(_)
    )
}

/// Charges the shallow size of the operands `instr` takes from `stack`
/// (string bytes, [`ITEM_SIZE`] per item of a list or map, one fuel per
/// [`SIZE_PER_FUEL`]) to the fuel, before it runs: operations that scan their
/// operands without growing anything (`in`, comparisons, `length`, string
/// tests and methods) then cost fuel in proportion to their work.
#[cfg(feature = "fuel")]
pub(crate) fn charge_operands(
    state: &State,
    instr: &Instruction,
    stack: &Stack,
) -> Result<(), Error> {
    let Some(tracker) = &state.fuel_tracker else {
        return Ok(());
    };
    let count = match instr {
        Instruction::Eq
        | Instruction::Ne
        | Instruction::Lt
        | Instruction::Lte
        | Instruction::Gt
        | Instruction::Gte
        | Instruction::In => 2,
        Instruction::ApplyFilter(_, n, _)
        | Instruction::PerformTest(_, n, _)
        | Instruction::CallFunction(_, n)
        | Instruction::CallMethod(_, n)
        | Instruction::CallObject(n) => match n {
            Some(n) => *n as usize,
            // The argument count is on top of the stack, above the arguments.
            None => {
                stack
                    .peek_n(1)
                    .first()
                    .and_then(Value::as_usize)
                    .unwrap_or(0)
                    + 1
            }
        },
        _ => return Ok(()),
    };
    let size = stack.peek_n(count).iter().fold(0usize, |acc, v| {
        let own = match v.as_bytes() {
            Some(bytes) => bytes.len(),
            None if v.as_object().is_some() => v.len().unwrap_or(0).saturating_mul(ITEM_SIZE),
            None => 0,
        };
        acc.saturating_add(own)
    });
    tracker.consume(size / SIZE_PER_FUEL)
}

/// The error for a value or capture larger than `limit`.
pub(crate) fn too_large(limit: usize) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!("value size limit exceeded: a template value grew past {limit} bytes"),
    )
}

/// Fails if the operands of `*` are a string and a count whose repetition
/// would pass `limit` (checked before the string is built).
pub(crate) fn check_repeat(operands: &[Value], limit: usize) -> Result<(), Error> {
    if let [a, b] = operands {
        if let Some((s, n)) = a
            .as_str()
            .map(|s| (s, b))
            .or_else(|| b.as_str().map(|s| (s, a)))
        {
            if let Some(n) = n.as_usize() {
                if s.len().saturating_mul(n) > limit {
                    return Err(too_large(limit));
                }
            }
        }
    }
    Ok(())
}

/// Fails if `value` is larger than `limit` (string bytes plus [`ITEM_SIZE`]
/// per value, counted only up to the limit) or nests deeper than [`MAX_VALUE_DEPTH`];
/// otherwise charges its size (one fuel per [`SIZE_PER_FUEL`]) to the
/// render's fuel.
pub(crate) fn check(state: &State, value: &Value, limit: usize) -> Result<(), Error> {
    let mut size = ITEM_SIZE;
    let mut todo = vec![(value.clone(), 0usize)];
    while let Some((value, depth)) = todo.pop() {
        size = size.saturating_add(value.as_bytes().map_or(0, <[u8]>::len));
        if size > limit {
            return Err(too_large(limit));
        }
        if !matches!(
            value.kind(),
            ValueKind::Seq | ValueKind::Iterable | ValueKind::Map
        ) {
            continue;
        }
        if depth >= MAX_VALUE_DEPTH {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!(
                    "value size limit exceeded: a template value nests deeper than {MAX_VALUE_DEPTH} levels"
                ),
            ));
        }
        let is_map = value.kind() == ValueKind::Map;
        for item in value.try_iter()? {
            if is_map {
                todo.push((value.get_item(&item)?, depth + 1));
                size += ITEM_SIZE;
            }
            todo.push((item, depth + 1));
            size += ITEM_SIZE;
            if size > limit {
                return Err(too_large(limit));
            }
        }
    }
    #[cfg(feature = "fuel")]
    if let Some(tracker) = &state.fuel_tracker {
        tracker.consume(size.div_ceil(SIZE_PER_FUEL))?;
    }
    #[cfg(not(feature = "fuel"))]
    let _ = state;
    Ok(())
}
