from byoi.cli.entry import main

main()
