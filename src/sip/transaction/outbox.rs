//! The output queues of the sans-IO cores (DESIGN.md "The core API shape":
//! outputs drained after every input until empty).

use std::collections::VecDeque;

/// A FIFO of outputs that is emptied after every input, and so gives its
/// room back once emptied. A `VecDeque` keeps the room of its fullest
/// moment: every transaction, table and call leg kept four slots of
/// `Transmit` (256 bytes each) and of events (up to 360 bytes each) for
/// its whole life, about 8 KB per call with both legs (heaptrack of
/// `powerdial-load --only memory`; SPEC §6: under 20 KB per active call).
/// Here the room lives only from a push to the drain that follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbox<T>(VecDeque<T>);

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Outbox(VecDeque::new())
    }
}

impl<T> Outbox<T> {
    /// An empty queue, holding no room.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `item` behind the others.
    pub fn push(&mut self, item: T) {
        self.0.push_back(item);
    }

    /// The oldest item; the room is freed when the last one leaves.
    pub fn pop(&mut self) -> Option<T> {
        let item = self.0.pop_front();
        if self.0.is_empty() && self.0.capacity() > 0 {
            self.0 = VecDeque::new();
        }
        item
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many items are queued.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The queued items, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }

    /// The room held, in items (tests of the memory bound).
    pub fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::Outbox;

    #[test]
    fn keeps_order_and_frees_its_room_once_drained() {
        let mut q = Outbox::new();
        assert_eq!(q.capacity(), 0);
        q.push(1);
        q.push(2);
        q.push(3);
        assert!(q.capacity() >= 3);
        assert_eq!(q.pop(), Some(1));
        assert!(q.capacity() >= 2, "room kept while items wait");
        q.push(4);
        assert_eq!(q.len(), 3);
        assert_eq!(q.iter().copied().collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(q.pop(), Some(2));
        assert_eq!(q.pop(), Some(3));
        assert_eq!(q.pop(), Some(4));
        assert_eq!(q.capacity(), 0, "drained: no room held");
        assert_eq!(q.pop(), None);
        assert!(q.is_empty());
    }
}
