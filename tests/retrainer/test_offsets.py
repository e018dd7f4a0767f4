from retrainer.offsets import OffsetBook


def test_commits_only_the_done_prefix_of_each_partition() -> None:
    book = OffsetBook()
    for offset in (5, 6, 7):
        book.received(0, offset)
    book.received(1, 0)
    assert book.committable() == {0: 5, 1: 0}
    book.done(0, 7)  # a later request finished first
    assert book.committable() == {0: 5, 1: 0}
    book.done(0, 5)
    assert book.committable() == {0: 6, 1: 0}
    book.done(0, 6)
    book.done(1, 0)
    assert book.committable() == {0: 8, 1: 1}


def test_forget_drops_revoked_partitions() -> None:
    book = OffsetBook()
    book.received(3, 10)
    book.forget([3])
    assert book.committable() == {}
