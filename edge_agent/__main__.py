from kyojo.cli import main

main()
