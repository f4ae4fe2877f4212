from liif_cli.cli.main import main

main()
