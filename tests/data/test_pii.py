"""The default PII and secrets scanner: per-type positives and look-alike negatives (with the
validation that tells them apart), redaction modes, canonical rows, and per-type policies."""

import dataclasses
import re

import pytest

from tuneops.data import pii
from tuneops.data.pii import Finding, Scanner, apply_policy, redact, redact_row, scan, scan_row
from tuneops.errors import InvalidInput


def found(text: str) -> list[tuple[str, str]]:
    return [(f.type, text[f.start:f.end]) for f in scan(text)]


def types(text: str) -> set[str]:
    return {f.type for f in scan(text)}


def luhn_fix(body: str) -> str:
    return next(body + c for c in "0123456789" if pii.luhn_ok(body + c))


GH = "ghp_" + "aB3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI3kM5"  # 36 characters after the prefix
AWS_ID = "AKIA2E3MXQ4FJ7LZ5V6N"
AWS_SECRET = "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"  # 40 characters, mixed case, / and +


# ---- validators ----------------------------------------------------------------------------


def test_validators():
    assert pii.luhn_ok("4111111111111111") and not pii.luhn_ok("4111111111111112")
    assert pii.iban_ok("DE89370400440532013000") and not pii.iban_ok("DE88370400440532013000")
    assert not pii.iban_ok("DE8937040044053201300")  # one character short for DE (22)
    assert pii.ssn_ok("536221234")
    for bad in ("000121234", "666121234", "912121234", "536001234", "536220000", "078051120"):
        assert not pii.ssn_ok(bad), bad
    assert pii.nino_ok("AB123456C") and not pii.nino_ok("BG123456C") and not pii.nino_ok("AB123456E")
    assert not pii.nino_ok("QQ123456C")  # Q is never a first letter
    assert pii.es_dni_ok("12345678Z") and pii.es_dni_ok("X1234567L") and not pii.es_dni_ok("12345678A")
    assert pii.nl_bsn_ok("111222333") and not pii.nl_bsn_ok("123456789")
    assert pii.shannon_entropy("aaaa") == 0 and pii.shannon_entropy("abcd") == 2


# ---- per type: positives and look-alikes --------------------------------------------------


@pytest.mark.parametrize("text, value", [
    ("Contact jane.doe@example.com for access.", "jane.doe@example.com"),
    ('{"email": "O.BRIEN+work@Mail.Example.CO.UK"}', "O.BRIEN+work@Mail.Example.CO.UK"),
    ("From: Li Wang <li_wang42@uni-bonn.de>", "li_wang42@uni-bonn.de"),
    ("send it to ana-lena@acme.io.", "ana-lena@acme.io"),
])
def test_email(text, value):
    assert ("EMAIL", value) in found(text)


@pytest.mark.parametrize("text", [
    "thanks @username!", "icon@2x.png", "user@localhost", "git@github.com:acme/api.git",
    "npm i @scope/pkg@1.2.3", "@app.route('/health')",
])
def test_email_lookalikes(text):
    assert "EMAIL" not in types(text)


@pytest.mark.parametrize("text, value", [
    ("Call me at +44 20 7946 0958 tomorrow.", "+44 20 7946 0958"),
    ("Phone: (415) 555-0132", "(415) 555-0132"),
    ("my number is 415-555-0132.", "415-555-0132"),
    ("office line 415.555.0132", "415.555.0132"),
    ("ring 020 7946 0958 after 5pm", "020 7946 0958"),
    ("Tél : 01 23 45 67 89", "01 23 45 67 89"),
    ("+49 (0)30 1234567", "+49 (0)30 1234567"),
    ("tel:+14155550132", "+14155550132"),
    ("phone: 4155550132", "4155550132"),
    ("WhatsApp +55 11 91234-5678", "+55 11 91234-5678"),
    ("Jane Doe | 612 345 678 | Madrid", "612 345 678"),
    ("name,mobile,city\nJane Doe,0612345678,Lyon", "0612345678"),
])
def test_phone(text, value):
    assert ("PHONE", value) in found(text)


@pytest.mark.parametrize("text", [
    "Order 415-555-0199 has shipped", "SKU 4471-882-190", "version 1.2.3.4", "v10.0.0.1",
    "2023-11-15 14:32:07", "at 14:32:07.123", "epoch 1700000000", "ts=1700000000123",
    "ISBN 978-3-16-148410-0", "ISBN-10 0-306-40615-2", "zip 06618-6108", "15.11.2023",
    "layer sizes 512 768 1024", "4111 1111 1111 1112", "5458 0328 1909 4120",
    "Your order number is 002702217.", "build 10.0.19045.3693",
])
def test_phone_lookalikes(text):
    assert "PHONE" not in types(text)


def test_credit_card_luhn_and_layouts():
    visa = luhn_fix("411111111111111")
    assert ("CREDIT_CARD", "4111 1111 1111 1111") in found("Card number: 4111 1111 1111 1111")
    assert ("CREDIT_CARD", "4111-1111-1111-1111") in found("cc=4111-1111-1111-1111")
    assert ("CREDIT_CARD", visa) in found(f'{{"card": "{visa}"}}')
    assert ("CREDIT_CARD", "3782 822463 10005") in found("Amex 3782 822463 10005")
    # the card ends before the expiry that follows it
    assert ("CREDIT_CARD", "4111 1111 1111 1111") in found("billing: 4111 1111 1111 1111 11/25")
    # Luhn-failing look-alikes, numbers without an issuer prefix, barcodes
    assert "CREDIT_CARD" not in types("Card number: 4111 1111 1111 1112")
    assert "CREDIT_CARD" not in types(f"order {luhn_fix('912345678901234')}")
    assert "CREDIT_CARD" not in types("EAN 4006381333931")
    # a 19-digit number printed 4-4-4-4-3 that fails Luhn is not trimmed to a valid 16-digit prefix
    bad19 = luhn_fix("621234567890123")  # a valid 16-digit prefix ...
    assert "CREDIT_CARD" not in types(f"charged to {bad19[:4]}-{bad19[4:8]}-{bad19[8:12]}-{bad19[12:]}-"
                                      f"{'123' if not pii.luhn_ok(bad19 + '123') else '124'}")


def test_iban_mod97_and_length():
    assert ("IBAN", "DE89 3704 0044 0532 0130 00") in found("IBAN: DE89 3704 0044 0532 0130 00 please")
    assert ("IBAN", "GB82WEST12345698765432") in found("pay GB82WEST12345698765432.")
    assert ("IBAN", "gb82west12345698765432") in found("iban gb82west12345698765432")
    assert ("IBAN", "NL91-ABNA-0417-1643-00") in found("NL91-ABNA-0417-1643-00")
    assert "IBAN" not in types("IBAN: DE88 3704 0044 0532 0130 00")  # checksum off by one
    assert "IBAN" not in types("IBAN: GB82WEST1234569876543")  # one digit short for GB
    assert "IBAN" not in types("XX89 3704 0044 0532 0130 00")  # no such country


def test_us_ssn_rules_and_context():
    assert ("US_SSN", "536-22-1234") in found("SSN: 536-22-1234")
    assert ("US_SSN", "536-22-1234") in found("employee 536-22-1234 on file")  # dashed: no context needed
    assert ("US_SSN", "536 22 1234") in found("social security number 536 22 1234")
    assert ("US_SSN", "536221234") in found("ssn=536221234")
    assert "US_SSN" not in types("ref 536221234")  # a bare 9-digit number needs context
    for bad in ("000-12-3456", "666-12-3456", "912-12-3456", "536-00-1234", "536-22-0000", "078-05-1120"):
        assert "US_SSN" not in types(f"SSN: {bad}"), bad


def test_us_ssn_bare_after_a_name_in_a_headerless_record():
    # a person's record pasted without its header: first and last name, then the 9 digits
    assert ("US_SSN", "349344833") in found("Lukas Muller,349344833,Pune")
    assert ("US_SSN", "329642983") in found("Rows below.\nAnna-Lena Khan;329642983;London")
    assert ("US_SSN", "702611002") in found("flow changed. O'Brien Patel\t702611002")
    assert "US_SSN" not in types("Raj,335193977,Kraków")  # one word is not a name
    assert "US_SSN" not in types("Order Id,349344833,Shipped")  # a label, not a name
    assert "US_SSN" not in types("Lukas Muller,912344833,Pune")  # area 9xx: not an SSN
    assert "US_SSN" not in types("Lukas Muller,349344833 and more")  # not a whole field
    assert not scan("name,account,city\nLukas Muller,349344833,Pune")  # the header says what it is
    assert ("PHONE", "612345678") in found("phone: Lukas Muller,612345678")  # a phone word: a phone


def test_ssn_layout_failing_the_ssa_rules_is_not_a_phone():
    for text in ("054-00-4411, for", "batch done.\n066-77-0000\nnext"):
        assert not scan(text), text
    assert ("PHONE", "066-77-0000") in found("call 066-77-0000")


def test_uk_nino_and_es_dni_and_nl_bsn():
    assert ("UK_NINO", "AB 12 34 56 C") in found("NI number: AB 12 34 56 C")
    assert ("UK_NINO", "AB123456C") in found("employee AB123456C")
    assert ("UK_NINO", "AB 123456 C") in found("NINO AB 123456 C")
    for bad in ("BG 12 34 56 A", "AB 12 34 56 E", "QQ 12 34 56 C", "DA 12 34 56 A"):
        assert "UK_NINO" not in types(f"NI number {bad}"), bad
    assert ("ES_DNI", "12345678Z") in found("DNI: 12345678Z")
    assert ("ES_DNI", "X-1234567-L") in found("NIE: X-1234567-L")
    assert "ES_DNI" not in types("DNI 12345678A")  # wrong check letter
    assert ("NL_BSN", "111222333") in found("BSN: 111222333")
    assert ("NL_BSN", "1112.22.333") in found("burgerservicenummer 1112.22.333")
    assert "NL_BSN" not in types("BSN: 123456789")  # fails the 11-test
    assert "NL_BSN" not in types("invoice 111222333")  # valid 11-test but no BSN context


def test_ip_addresses():
    assert ("IP_ADDRESS", "192.168.1.20") in found("Connection from 192.168.1.20 refused")
    assert ("IP_ADDRESS", "10.0.0.1") in found("http://10.0.0.1:8080/health")
    assert ("IP_ADDRESS", "203.0.113.0/24") in found("allow 203.0.113.0/24")
    assert ("IP_ADDRESS", "fe80::1ff:fe23:4567:890a") in found("inet6 fe80::1ff:fe23:4567:890a scope link")
    assert ("IP_ADDRESS", "2001:db8::8a2e:370:7334") in found("[2001:db8::8a2e:370:7334]:443")
    for text in ("256.1.1.1", "192.168.1.300", "v1.2.3.4", "build 10.0.19045.3693", "1.2.3.4.5",
                 "14:32:07", "MAC 00:1A:2B:3C:4D:5E", "std::vector<int>"):
        assert "IP_ADDRESS" not in types(text), text


def test_url_credentials():
    text = "DATABASE_URL=postgres://admin:s3cr3tP@ss@db.internal:5432/app"
    assert found(text) == [("URL_CREDENTIALS", "admin:s3cr3tP@ss")]  # not an e-mail "ss@db.internal"
    assert ("URL_CREDENTIALS", ":hunter22") in found("redis://:hunter22@cache:6379/0")
    for text in ("postgres://app:${DB_PASSWORD}@db:5432/app", "https://jane@example.com/",
                 "http://localhost:8080/health", "amqp://guest:****@rabbit:5672", "mysql://root:<password>@db"):
        assert "URL_CREDENTIALS" not in types(text), text


def test_cloud_and_vcs_tokens():
    assert ("AWS_ACCESS_KEY", AWS_ID) in found(f"aws_access_key_id = {AWS_ID}")
    assert "AWS_ACCESS_KEY" not in types("AKIAXXXXXXXXXXXXXXXX and AKIA1234567890189012")  # placeholder; not base32
    assert ("AWS_SECRET_KEY", AWS_SECRET) in found(f"aws_secret_access_key = {AWS_SECRET}")
    assert ("AWS_SECRET_KEY", AWS_SECRET) in found(f'"SecretAccessKey": "{AWS_SECRET}",')
    assert not types("aws deploy from commit 3f2a9c1b4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f90")  # a git SHA
    assert ("GITHUB_TOKEN", GH) in found(f"GITHUB_TOKEN={GH}")
    pat = "github_pat_" + "A1b2C3d4E5f6G7h8I9j0K1" + "_" + "x" * 20 + "Yz0123456789AbCdEfGhIjKlMnOpQrStUvWxYz012"
    assert ("GITHUB_TOKEN", pat) in found(f"token: {pat}")
    assert "GITHUB_TOKEN" not in types("the ghp_ prefix; ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; gh_pages")
    slack = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
    assert ("SLACK_TOKEN", slack) in found(f"SLACK_BOT_TOKEN={slack}")
    hook = "https://hooks.slack.com/services/T0123ABCD/B0456EFGH/AbCdEfGhIjKlMnOpQrStUvWx"
    assert ("SLACK_TOKEN", hook) in found(f"webhook: {hook}")  # the whole URL, scheme included
    assert "SLACK_TOKEN" not in types("xoxb-your-bot-token")


def test_private_keys():
    block = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7bq\nZ9xYw==\n-----END RSA PRIVATE KEY-----"
    assert found(f"key:\n{block}\nthanks") == [("PRIVATE_KEY", block)]
    escaped = block.replace("\n", "\\n")
    assert ("PRIVATE_KEY", escaped) in found(f'{{"private_key": "{escaped}\\n"}}')
    truncated = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU"
    text = f"{truncated}\nEmail me at jane@example.com"
    assert found(text) == [("PRIVATE_KEY", truncated), ("EMAIL", "jane@example.com")]
    # a truncated key inside JSON (escaped newlines): the key material is inside the span
    body = "-----BEGIN PRIVATE KEY-----\\nK0plUYew3Lt6BsFdxw/6l+P1JVd5\\nAbCdEfGh12345678"
    text = f'{{"private_key": "{body}", "type": "service_account"}}'
    assert found(text) == [("PRIVATE_KEY", body)]
    assert "K0plUYew" not in redact(text, scan(text)) and "AbCdEfGh" not in redact(text, scan(text))
    # two keys in a row are two findings
    two = f"{truncated}\n{block}"
    assert found(two) == [("PRIVATE_KEY", truncated), ("PRIVATE_KEY", block)]
    for text in ("-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqh\n-----END PUBLIC KEY-----",
                 "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl\n-----END CERTIFICATE-----",
                 "store the PRIVATE KEY in a vault"):
        assert "PRIVATE_KEY" not in types(text)


@pytest.mark.parametrize("text, value", [
    ('api_key = "9f8e7d6c5b4a39281706f5e4d3c2b1a0"', "9f8e7d6c5b4a39281706f5e4d3c2b1a0"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
    ('"client_secret": "Xq7vR2mT9wLp4sZk8nB3",', "Xq7vR2mT9wLp4sZk8nB3"),
    ("X-API-Key: 4f1c9e2a7b3d8e6f0a5c", "4f1c9e2a7b3d8e6f0a5c"),
    ('password = "hunter22"', "hunter22"),
    ("DB_PASSWORD=s3cr3tP4ss", "s3cr3tP4ss"),
    ("mysql -u root --password=Tr0ub4dor&3x", "Tr0ub4dor&3x"),
    ('--password "correct horse battery staple"', "correct horse battery staple"),
    ("?api_key=a8F3kL9mQ2xZ7pW4&limit=10", "a8F3kL9mQ2xZ7pW4"),
    ("here's my key: sk-proj-Ab3dEf5gHi7jKl9mNo1pQr3sTu5vWx7yZa9bCd1eFg3h", "sk-proj-Ab3dEf5gHi7jKl9mNo1pQr3sTu5vWx7yZa9bCd1eFg3h"),
])
def test_generic_secret(text, value):
    assert ("GENERIC_SECRET", value) in found(text)


@pytest.mark.parametrize("text", [
    "max_tokens = 512", 'tokenizer = AutoTokenizer.from_pretrained("gpt2")', 'password = os.environ["DB_PASSWORD"]',
    "api_key = get_api_key()", 'secret_name = "prod/db/creds"', "token: null", '"pad_token": "<|endoftext|>"',
    'password: "********"', 'api_key = "YOUR_API_KEY"', 'api_key = "<your-api-key>"', 'key = "name"',
    "the key to success is patience", "Password: please reset it via the portal", "secret_key = settings.SECRET_KEY",
    "AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY}", 'token = "hello"', "password = userPassword",
    "commit 3f2a9c1b4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f90", '"sha": "3f2a9c1b4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f90"',
    "if password == confirm_password:",
])
def test_generic_secret_lookalikes(text):
    assert not types(text) & {"GENERIC_SECRET", "AWS_SECRET_KEY"}


def test_findings_overlap_resolved_and_hold_no_value():
    text = f'{{"token": "{GH}", "email": "li@example.com", "note": "call +1 415 555 0132"}}'
    fs = scan(text)
    assert [f.type for f in fs] == ["GITHUB_TOKEN", "EMAIL", "PHONE"]  # GitHub wins over the generic secret
    assert all(fs[i].end <= fs[i + 1].start for i in range(len(fs) - 1))
    assert [fld.name for fld in dataclasses.fields(Finding)] == ["type", "start", "end", "confidence"]
    assert all(0 < f.confidence <= 1 for f in fs)
    assert scan("") == [] and scan("nothing to see here, 42 apples") == []


def test_scanner_types_and_ner_hook():
    text = "Jane Doe (jane@example.com) called from 192.168.0.7"
    assert {f.type for f in Scanner(types=["EMAIL"]).scan(text)} == {"EMAIL"}
    with pytest.raises(InvalidInput):
        Scanner(types=["EMAIL", "SHOE_SIZE"])
    assert "PERSON" not in types(text)  # no NER by default

    def fake_ner(t):
        i = t.index("Jane Doe")
        return [(i, i + 8, "PER", 0.97), (0, 4, "PER", 0.2)]  # the weak span is dropped

    fs = Scanner(ner=fake_ner).scan(text)
    assert [(f.type, text[f.start:f.end]) for f in fs] == [("PERSON", "Jane Doe"), ("EMAIL", "jane@example.com"),
                                                           ("IP_ADDRESS", "192.168.0.7")]


# ---- redaction -------------------------------------------------------------------------------

TEXT = "Mail jane.doe@example.com or pay with 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00."


def test_redact_placeholder():
    out = redact(TEXT, scan(TEXT))
    assert out == "Mail <EMAIL> or pay with <CREDIT_CARD>, IBAN <IBAN>."


def test_redact_mask_keeps_length_and_card_last4():
    out = redact(TEXT, scan(TEXT), mode="mask")
    assert len(out) == len(TEXT)
    assert "**** **** **** 1111" in out
    assert "jane" not in out and "example" not in out and "****.***@*******.***" in out
    assert "**** **** **** **** **30 00" in out  # IBAN: the last 4 characters and the separators kept


def test_redact_hash_stable_per_salt():
    a = redact(TEXT, scan(TEXT), mode="hash", salt=b"tenant-a")
    assert re.fullmatch(r"Mail <EMAIL:[0-9a-f]{8}> or pay with <CREDIT_CARD:[0-9a-f]{8}>, IBAN <IBAN:[0-9a-f]{8}>\.", a)
    assert redact(TEXT, scan(TEXT), mode="hash", salt=b"tenant-a") == a
    assert redact(TEXT, scan(TEXT), mode="hash", salt="tenant-b") != a
    for value in ("jane.doe@example.com", "4111 1111 1111 1111", "DE89"):
        assert value not in a
    # the same value however it is written hashes the same (e-mail case, card separators)
    t1, t2 = "JANE.DOE@EXAMPLE.COM 4111-1111-1111-1111", "jane.doe@example.com 4111111111111111"
    assert redact(t1, scan(t1), mode="hash", salt=b"s") == redact(t2, scan(t2), mode="hash", salt=b"s")


def test_redact_errors():
    with pytest.raises(InvalidInput, match="salt"):
        redact(TEXT, scan(TEXT), mode="hash")
    with pytest.raises(InvalidInput, match="mode"):
        redact(TEXT, scan(TEXT), mode="shred")
    assert redact("nothing here", []) == "nothing here"


# ---- rows and policy ---------------------------------------------------------------------------

SFT = {
    "messages": [
        {"role": "system", "content": "You are a support agent."},
        {"role": "user", "content": "I'm jane@example.com, call me on +44 20 7946 0958."},
        {"role": "assistant", "content": "Done.", "tool_calls": [
            {"type": "function", "function": {"name": "lookup", "arguments": '{"ssn": "536-22-1234"}'}}]},
        {"role": "user", "content": [{"type": "text", "text": "backup: li@example.org"}]},
    ],
    "source": "tickets", "license": "CC0-1.0",
}
PREF = {
    "prompt": [{"role": "user", "content": "What's the admin password?"}],
    "chosen": [{"role": "assistant", "content": "I can't share credentials."}],
    "rejected": [{"role": "assistant", "content": 'It is password = "Sup3rS3cret!" and the key is ' + GH}],
}


def test_scan_row_counts_every_message():
    assert scan_row(SFT) == {"EMAIL": 2, "PHONE": 1, "US_SSN": 1}
    assert scan_row(PREF) == {"GENERIC_SECRET": 1, "GITHUB_TOKEN": 1}
    assert scan_row({"prompt": "mail a@example.com", "completion": "ok"}) == {"EMAIL": 1}


def test_redact_row_copies_and_redacts():
    before = repr(SFT)
    row, counts = redact_row(SFT)
    assert repr(SFT) == before  # the input row is untouched
    assert counts == {"EMAIL": 2, "PHONE": 1, "US_SSN": 1}
    assert row["messages"][1]["content"] == "I'm <EMAIL>, call me on <PHONE>."
    assert row["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"ssn": "<US_SSN>"}'
    assert row["messages"][3]["content"][0]["text"] == "backup: <EMAIL>"
    assert row["source"] == "tickets"
    row, _ = redact_row(PREF, mode="hash", salt=b"k")
    assert "Sup3rS3cret" not in repr(row) and GH not in repr(row)
    assert row["chosen"] == PREF["chosen"]


def test_policy_block_redact_allow():
    row, counts, blocked = apply_policy(SFT, {"US_SSN": "block"})
    assert row is None and blocked == ["US_SSN"] and counts["US_SSN"] == 1
    row, counts, blocked = apply_policy(SFT, {"US_SSN": "allow", "EMAIL": "redact", "PHONE": "allow"})
    assert blocked == [] and counts == {"EMAIL": 2, "PHONE": 1, "US_SSN": 1}
    assert row["messages"][1]["content"] == "I'm <EMAIL>, call me on +44 20 7946 0958."
    assert "536-22-1234" in row["messages"][2]["tool_calls"][0]["function"]["arguments"]
    # types the policy does not name take the default (or the policy's "*")
    row, _, _ = apply_policy(SFT, {"EMAIL": "redact"}, default="allow")
    assert "+44 20 7946 0958" in row["messages"][1]["content"]
    row, _, blocked = apply_policy(PREF, {"*": "block", "EMAIL": "allow"})
    assert row is None and blocked == ["GENERIC_SECRET", "GITHUB_TOKEN"]
    row, counts, blocked = apply_policy({"messages": [{"role": "user", "content": "hello"}]}, {"EMAIL": "block"})
    assert row == {"messages": [{"role": "user", "content": "hello"}]} and counts == {} and blocked == []
    res = apply_policy(SFT, {"email": "redact"}, mode="mask")
    assert res.row["messages"][1]["content"].startswith("I'm ****@*******.***,")


def test_policy_errors():
    with pytest.raises(InvalidInput, match="SHOE_SIZE"):
        apply_policy(SFT, {"SHOE_SIZE": "block"})
    with pytest.raises(InvalidInput, match="shred"):
        apply_policy(SFT, {"EMAIL": "shred"})
    with pytest.raises(InvalidInput, match="salt"):
        apply_policy(SFT, {"EMAIL": "redact"}, mode="hash")


# ---- scale ---------------------------------------------------------------------------------------


def test_long_inputs_stay_linear():
    import random
    import time

    r = random.Random(0)
    digits = "".join(r.choice("0123456789") for _ in range(20_000))  # was exponential in the phone pattern
    spaced = " ".join(digits[:5_000])
    keys = "api_key = " * 5_000
    t0 = time.perf_counter()
    for text in (digits, spaced, keys, "x@" + "a." * 20_000 + "1"):
        scan(text)
    assert time.perf_counter() - t0 < 5  # ~0.2 s here; generous for a loaded machine


def test_csv_header_context_reaches_every_row():
    rows = "\n".join(f"Person {i},4{i:03d}55{i:04d},Lyon" for i in range(300))
    text = "name,phone,city\n" + rows
    fs = scan(text)
    assert len(fs) == 300 and {f.type for f in fs} == {"PHONE"}  # bare digits: the header says "phone"
    assert not scan("name,account,city\n" + rows)  # the same digits under another header are not phones
