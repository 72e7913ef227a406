from sqlalchemy import text
from sqlalchemy.orm import Session
from tests.factories import make_number

def test_probe(session, engine):
    make_number(session, account_id="acc_a", phone_number="+14155550100")
    with engine.connect() as other:
        print(engine.dialect.name, other.scalar(text("SELECT count(*) FROM phone_numbers")))
