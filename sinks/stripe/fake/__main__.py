from meterline.sinks.stripe.fake.server import main

main()
