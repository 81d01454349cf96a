from byoi.cli.main import app

app()
