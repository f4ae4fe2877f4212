from liif_cli.cli import main

main()
