from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

import pgq

app = pgq.App.from_env()  # PGQ_DATABASE_URL


@app.task(name="email.welcome", queue="critical", max_attempts=5)
def send_welcome(user_id: int) -> None:
    ...


engine = create_engine(app.settings.sqlalchemy_url)
with Session(engine) as session, session.begin():
    session.execute(text("CREATE TABLE IF NOT EXISTS users (id serial PRIMARY KEY, email text)"))
    user_id = session.execute(
        text("INSERT INTO users (email) VALUES ('ada@example.com') RETURNING id")
    ).scalar_one()
    job = app.enqueue(send_welcome, {"user_id": user_id}, conn=session)
# Committed: the user row and the job exist together. Had the block raised, neither would.
print(f"user {user_id} saved, welcome e-mail is job {job.id}")
app.close()
