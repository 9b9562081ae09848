"""SMS PDUs: known-good bytes, decoded back by two libraries that are not ours
(python-gsmmodem-new's pdu module and smspdudecoder)."""

from __future__ import annotations

import datetime as dt

import pytest
from gsmmodem import pdu as gsm_pdu
from hypothesis import given, settings
from hypothesis import strategies as st
from smspdudecoder.easy import read_outgoing_sms

from pingan_modem import pdu
from pingan_sim.modem import deliver, status_report


def decoded_text(parts: list[pdu.Part]) -> str:
    """Join what python-gsmmodem decodes: it yields UTF-16 code units as characters, so a
    surrogate pair split across parts would come out as two lone halves."""
    units = "".join(gsm_pdu.decodeSmsPdu(p.hex)["text"] for p in parts)
    return units.encode("utf-16-be", "surrogatepass").decode("utf-16-be")


def test_chinese_single_part_is_byte_for_byte_what_another_encoder_makes():
    parts = pdu.encode_submit("+8613800138000", "平安报警：测试", reference=7)
    known = "0031000D91683108108300F00008A70E5E735B8962A58B66FF1A6D4B8BD5"
    assert [p.hex for p in parts] == [known]
    assert parts[0].length == 29  # TPDU octets: the "00" SMSC field not counted
    theirs = gsm_pdu.encodeSmsSubmitPdu("+8613800138000", "平安报警：测试", reference=0,
                                        validity=dt.timedelta(hours=24),
                                        requestStatusReport=True)
    assert [str(p) for p in theirs] == [known]
    assert read_outgoing_sms(known) == {"recipient": "+8613800138000", "content": "平安报警：测试"}


def test_emoji_is_a_surrogate_pair_in_ucs2():
    parts = pdu.encode_submit("+8613800138000", "报警😀", reference=1)
    assert [p.hex for p in parts] == ["0031000D91683108108300F00008A70862A58B66D83DDE00"]
    assert decoded_text(parts) == "报警😀"
    assert read_outgoing_sms(parts[0].hex)["content"] == "报警😀"


def test_long_text_cut_before_a_surrogate_pair_not_through_it():
    # Unit 67 would be the high half of 😀: part 1 takes 66 units, 😀 starts part 2.
    text = "平" * 66 + "😀" + "安" * 10
    parts = pdu.encode_submit("10086", text, reference=0x2A)
    assert [p.hex for p in parts] == [
        "00710005810180F60008A78A0500032A0201" + "5E73" * 66,
        "00710005810180F60008A71E0500032A0202D83DDE00" + "5B89" * 10,
    ]
    assert [p.length for p in parts] == [149, 41]
    decoded = [gsm_pdu.decodeSmsPdu(p.hex) for p in parts]
    assert [[(u.reference, u.parts, u.number) for u in d["udh"]] for d in decoded] == [
        [(0x2A, 2, 1)], [(0x2A, 2, 2)]]
    assert all(d["number"] == "10086" for d in decoded)
    assert decoded_text(parts) == text


def test_seventy_units_fit_one_part_seventy_one_do_not():
    assert pdu.part_count("平安" * 34 + "😀") == 1  # 68 + 2 units
    assert pdu.part_count("平" * 71) == 2
    assert pdu.part_count("平" * 67 * 3) == 3


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(["平", "安", "A", " ", "😀", "🚨", "𠀀", "\n"]),
               min_size=1, max_size=400))
def test_any_text_splits_into_valid_parts_that_join_back(text):
    parts = pdu.encode_submit("+8613800138000", text, reference=200)
    chunks = pdu.split_utf16(text)
    assert len(parts) == len(chunks)
    for chunk in chunks:
        chunk.decode("utf-16-be")  # each part stands alone: no half surrogate pair
        assert len(chunk) <= (140 if len(chunks) == 1 else 134)
    assert decoded_text(parts) == text
    for p in parts:
        assert read_outgoing_sms(p.hex)["recipient"] == "+8613800138000"


def test_bad_numbers_are_refused():
    for bad in ("", "+", "12ab", "+86 138"):
        with pytest.raises(pdu.PduError):
            pdu.encode_submit(bad, "x", 1)


def test_status_report_parsed():
    _, hexpdu = status_report(0x9C, "+8613800138000", 0x00)
    report = pdu.parse_status_report(hexpdu)
    assert (report.reference, report.number, report.outcome) == (0x9C, "+8613800138000",
                                                                 "delivered")
    assert gsm_pdu.decodeSmsPdu(hexpdu)["reference"] == 0x9C  # the sim's PDU is sane
    assert pdu.parse_status_report(status_report(1, "10086", 0x41)[1]).outcome == "failed"
    assert pdu.parse_status_report(status_report(1, "10086", 0x20)[1]).outcome == "pending"
    with pytest.raises(pdu.PduError):
        pdu.parse_status_report("0011")


def test_incoming_deliver_ucs2_gsm7_and_parts():
    assert pdu.parse_deliver(deliver("+8613912345678", "状态")[1]) == pdu.Incoming(
        "+8613912345678", "状态", None)
    assert pdu.parse_deliver(deliver("13912345678", "status", gsm7=True)[1]).text == "status"
    part = pdu.parse_deliver(deliver("+8613912345678", "状", part=(5, 2, 1))[1])
    assert part.part == (5, 2, 1)
    with pytest.raises(pdu.PduError):
        pdu.parse_deliver("07ZZ")
